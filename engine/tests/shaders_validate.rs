//! Every WGSL kernel parses and validates with naga (the compiler wgpu uses), without a
//! GPU; each variant in `shaders::ALL` is its directives and constants then its files, and
//! every `.wgsl` file under `shaders/` is used by some variant. The cooperative-matrix
//! kernels, which no CPU driver can run, are also checked to need the capability and to
//! translate to SPIR-V, as wgpu's Vulkan back end will on a GPU that has it.

use std::collections::BTreeSet;
use std::path::Path;

use hydralora_engine::ops::matmul::MatmulKernel;
use hydralora_engine::shaders::{self, ALL, COMPOSITION, WEIGHT_FORMATS};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shaders_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders")
}

#[test]
fn every_shader_parses_and_validates() {
    let mut failures = Vec::new();
    for shader in ALL {
        let module = match naga::front::wgsl::parse_str(shader.source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!(
                    "{}.wgsl: parse error:\n{}",
                    shader.name,
                    e.emit_to_string(shader.source)
                ));
                continue;
            }
        };
        if module.entry_points.is_empty() {
            failures.push(format!("{}.wgsl: no entry point", shader.name));
        }
        if let Err(e) =
            Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module)
        {
            failures.push(format!(
                "{}.wgsl: validation error:\n{}",
                shader.name,
                e.emit_to_string(shader.source)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_entry_point_is_a_compute_shader() {
    for shader in ALL {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        for ep in &module.entry_points {
            assert_eq!(
                ep.stage,
                naga::ShaderStage::Compute,
                "{}.wgsl: {}",
                shader.name,
                ep.name
            );
            assert!(
                ep.workgroup_size.iter().all(|&n| n >= 1),
                "{}.wgsl: {}",
                shader.name,
                ep.name
            );
        }
    }
}

#[test]
fn every_variant_is_its_constants_then_its_files_and_every_file_is_used() {
    assert_eq!(ALL.len(), COMPOSITION.len());
    let mut names = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (shader, (name, consts, files)) in ALL.iter().zip(COMPOSITION) {
        assert_eq!(shader.name, *name);
        assert!(names.insert(shader.name), "{} is listed twice", shader.name);
        // Directives (`enable x;`) must open a WGSL module: all of them, then the constants.
        let directives = consts
            .iter()
            .take_while(|c| c.starts_with("enable "))
            .count();
        assert!(
            consts[directives..].iter().all(|c| c.starts_with("const ")),
            "{}: {consts:?}",
            shader.name
        );
        let mut expected: String = consts.iter().map(|c| format!("{c}\n")).collect();
        for file in *files {
            let path = shaders_dir().join(format!("{file}.wgsl"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            expected.push_str(&text);
            expected.push('\n');
            used.insert(file.to_string());
        }
        assert!(
            shader.source == expected,
            "{} is not its constants then {files:?}",
            shader.name
        );
        // The kernel file (the last) names the variant: `file` or `file+choice+...`.
        let kernel = files.last().unwrap().rsplit('/').next().unwrap();
        let stem = shader.name.split('+').next().unwrap();
        assert_eq!(stem, kernel, "{}: named after its kernel file", shader.name);
    }
    let mut on_disk = BTreeSet::new();
    collect_wgsl(&shaders_dir(), "", &mut on_disk);
    let unused: Vec<_> = on_disk.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "shader files that no variant in shaders::ALL uses: {unused:?}"
    );
}

#[test]
fn both_flavours_of_a_row_kernel_have_the_same_entry_points_and_bindings() {
    let interface = |source: &str| {
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let entries: BTreeSet<_> = module
            .entry_points
            .iter()
            .map(|ep| (ep.name.clone(), ep.workgroup_size))
            .collect();
        let bindings: BTreeSet<_> = module
            .global_variables
            .iter()
            .filter_map(|(_, var)| {
                let binding = var.binding.as_ref()?;
                Some((
                    binding.group,
                    binding.binding,
                    var.name.clone(),
                    format!("{:?}", var.space),
                ))
            })
            .collect();
        (entries, bindings)
    };
    let mut pairs = 0;
    for shader in ALL {
        let Some(stem) = shader.name.strip_suffix("+subgroup") else {
            continue;
        };
        let tree = ALL
            .iter()
            .find(|s| s.name == stem)
            .unwrap_or_else(|| panic!("{} has no tree flavour named {stem}", shader.name));
        assert_eq!(
            interface(shader.source),
            interface(tree.source),
            "{} and {stem}",
            shader.name
        );
        pairs += 1;
    }
    // softmax, softmax_backward, rms_norm, rms_norm_backward, cross_entropy, reduce
    assert_eq!(pairs, 6);
}

/// Every `.wgsl` file under `dir`, as a path relative to `shaders/` without `.wgsl`.
fn collect_wgsl(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            collect_wgsl(&path, &format!("{prefix}{name}/"), out);
        } else if let Some(stem) = name.strip_suffix(".wgsl") {
            out.insert(format!("{prefix}{stem}"));
        }
    }
}

/// The cooperative-matrix variants: every weight format, C= and C+=, both fragment shapes.
fn cooperative_variants() -> Vec<&'static shaders::Shader> {
    let mut out = Vec::new();
    for kernel in MatmulKernel::COOPERATIVE {
        for format in WEIGHT_FORMATS {
            for accumulate in [false, true] {
                out.push(shaders::matmul(kernel, format, accumulate));
            }
        }
    }
    out
}

#[test]
fn cooperative_matrix_kernels_validate_with_the_capability_only() {
    let variants = cooperative_variants();
    assert_eq!(variants.len(), 2 * WEIGHT_FORMATS.len() * 2);
    let mut names = BTreeSet::new();
    for shader in variants {
        assert!(
            names.insert(shader.name),
            "{} is in the table twice",
            shader.name
        );
        assert!(shader.name.starts_with("matmul_coop+"), "{}", shader.name);
        let module = naga::front::wgsl::parse_str(shader.source)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        if let Err(e) =
            Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module)
        {
            panic!("{}: {}", shader.name, e.emit_to_string(shader.source));
        }
        // A device without the capability would reject the module: the host must never
        // build these pipelines there (tests/coopmat.rs checks it never tries).
        let without = Capabilities::all() - Capabilities::COOPERATIVE_MATRIX;
        assert!(
            Validator::new(ValidationFlags::all(), without)
                .validate(&module)
                .is_err(),
            "{} validates without the cooperative-matrix capability",
            shader.name
        );
    }
}

/// naga's SPIR-V back end (what wgpu runs on Vulkan) translates every cooperative-matrix
/// variant, with the capability a Vulkan device that lists the shape is opened with.
#[test]
fn cooperative_matrix_kernels_translate_to_spirv() {
    for shader in cooperative_variants() {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", shader.name));
        let options = naga::back::spv::Options {
            lang_version: (1, 6),
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, None)
            .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", shader.name));
        // OpCapability CooperativeMatrixKHR (6022): the module asks for the matrix units.
        let op_capability = (2 << 16) | 17;
        let has_capability = words
            .windows(2)
            .any(|w| w[0] == op_capability && w[1] == 6022);
        assert!(
            has_capability,
            "{}: no CooperativeMatrixKHR capability",
            shader.name
        );
    }
}

/// `shaders::entry_points` (the text scan the browser check uses, which has no naga) finds
/// exactly naga's compute entry points, in order.
#[test]
fn the_entry_point_scan_agrees_with_naga() {
    for shader in ALL {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        let naga_names: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let mut scanned = shaders::entry_points(shader.source);
        let mut expected = naga_names.clone();
        scanned.sort_unstable();
        expected.sort_unstable();
        assert_eq!(scanned, expected, "{}", shader.name);
    }
}
