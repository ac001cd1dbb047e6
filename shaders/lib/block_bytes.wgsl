// Byte access to B for the GGUF block formats (lib/weights_q*.wgsl), which bind B as the
// file's byte stream in 32-bit words: a block is 18, 34, 144 or 210 bytes, so its fields
// fall anywhere in a word. Little-endian, as GGUF stores them. Every offset here is even.

// The byte at offset o, 0 .. 255.
fn byte_at(o: u32) -> u32 {
    return (b[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

// The byte at offset o as a signed value, -128 .. 127.
fn signed_byte_at(o: u32) -> i32 {
    return bitcast<i32>(byte_at(o) << 24u) >> 24u;
}

// The four bytes at offsets o .. o + 3 (o even) as one little-endian word.
fn bytes4_at(o: u32) -> u32 {
    let w = o >> 2u;
    if ((o & 3u) == 0u) {
        return b[w];
    }
    return (b[w] >> 16u) | (b[w + 1u] << 16u);
}

// The f16 at offset o (o even), widened.
fn half_at(o: u32) -> f32 {
    return unpack2x16float((b[o >> 2u] >> ((o & 2u) * 8u)) & 0xffffu).x;
}

// The four bytes of a word as signed values, lowest byte first.
fn signed_bytes4(v: u32) -> vec4<f32> {
    return vec4<f32>(
        vec4(bitcast<i32>(v << 24u), bitcast<i32>(v << 16u), bitcast<i32>(v << 8u), bitcast<i32>(v)) >> vec4(24u)
    );
}

// The low nibbles of a word's four bytes (after shifting the word right by 0 or 4).
fn nibbles4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4(v, v >> 8u, v >> 16u, v >> 24u) & vec4(15u));
}
