//! Kernel parameters as typed structs: each kernel's params block (`@binding(0)`) is a
//! `#[repr(C)]` Pod struct declared beside its op by `kernel_params!`, field for field
//! the WGSL struct of the same name, and passed to `Device::dispatch` by reference. A unit test
//! checks every struct's size, field offsets and field types against naga's layout of the
//! WGSL struct in each shader variant that binds it, and that every built-in variant's
//! params struct is one of them: a field added on one side only fails there, not on a GPU.

/// A kernel's params block, as `Device::dispatch` writes it into the params arena.
pub(crate) trait KernelParams {
    /// The block's bytes.
    fn bytes(&self) -> &[u8];
}

/// Words: a user kernel's params (`custom::launch`).
impl KernelParams for [u32] {
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self)
    }
}

/// Declares a kernel's params struct, dispatchable and registered for the layout test:
///
/// ```text
/// kernel_params! {
///     /// RMS norm's backward.
///     pub(crate) struct NormBackwardParams as "NormParams" for [shaders::RMS_NORM_BACKWARD] {
///         rows: u32,
///         dim: u32,
///     }
/// }
/// ```
///
/// `as "Name"` names the WGSL struct where it differs from the Rust one (two kernels of
/// one op whose WGSL structs share a name but not a layout); `for [...]` lists the shader
/// variants that bind it (or `for each (iterator of &&Shader)`, a family kept in a table). The struct must also be listed in this file's `all()` (a test
/// fails naming any built-in variant whose params struct is not).
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident $(as $wgsl:literal)? for [$($shader:expr),+ $(,)?] {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $crate::ops::kernel_params::kernel_params! {
            $(#[$meta])*
            $vis struct $name $(as $wgsl)? for each ([$(&$shader),+].iter()) {
                $($(#[$field_meta])* $field: $ty),*
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident $(as $wgsl:literal)? for each ($shaders:expr) {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$field_meta])* $vis $field: $ty,)*
        }
        $crate::ops::kernel_params::impl_kernel_params!(
            $name $(as $wgsl)? for each ($shaders) { $($field),* }
        );
    };
}

/// Makes a `#[repr(C)]` Pod struct declared elsewhere a kernel's params block: dispatchable,
/// and registered for the layout test. Name every field, in order:
/// `impl_kernel_params!(SplitKParams for [shaders::MATMUL_SPLITK, ...] { numel, ... });`, or
/// `for each (<iterator of &Shader>)` for a family listed in a table (the matmul variants).
/// (`kernel_params!` does this for the structs it declares).
macro_rules! impl_kernel_params {
    ($name:ident $(as $wgsl:literal)? for [$($shader:expr),+ $(,)?] { $($field:ident),* $(,)? }) => {
        $crate::ops::kernel_params::impl_kernel_params!(
            $name $(as $wgsl)? for each ([$(&$shader),+].iter()) { $($field),* }
        );
    };
    ($name:ident $(as $wgsl:literal)? for each ($shaders:expr) { $($field:ident),* $(,)? }) => {
        impl $crate::ops::kernel_params::KernelParams for $name {
            fn bytes(&self) -> &[u8] {
                bytemuck::bytes_of(self)
            }
        }

        #[cfg(test)]
        impl $name {
            /// This struct's layout, to check against the WGSL struct it mirrors.
            pub(crate) fn layout() -> $crate::ops::kernel_params::ParamsLayout {
                use $crate::ops::kernel_params::{wgsl_type_of, ParamsLayout};
                ParamsLayout {
                    rust: stringify!($name),
                    wgsl: [$($wgsl,)? stringify!($name)][0],
                    shaders: $shaders.copied().collect(),
                    size: ::std::mem::size_of::<$name>(),
                    fields: vec![$((
                        stringify!($field),
                        ::std::mem::offset_of!($name, $field),
                        wgsl_type_of(|p: &$name| &p.$field),
                    )),*],
                }
            }
        }
    };
}

pub(crate) use impl_kernel_params;
pub(crate) use kernel_params;

#[cfg(test)]
pub(crate) use layout_test::{wgsl_type_of, ParamsLayout};

#[cfg(test)]
mod layout_test {
    use std::collections::BTreeMap;

    use crate::shaders::{self, Shader};

    /// A params struct as Rust lays it out, and the WGSL struct it mirrors.
    pub(crate) struct ParamsLayout {
        pub rust: &'static str,
        /// The WGSL struct's name.
        pub wgsl: &'static str,
        /// The shader variants that bind it as their params block.
        pub shaders: Vec<&'static Shader>,
        pub size: usize,
        /// (name, byte offset, WGSL type) of each field, in order.
        pub fields: Vec<(&'static str, usize, String)>,
    }

    /// Every params struct of the built-in kernels.
    fn all() -> Vec<ParamsLayout> {
        use crate::ops::{attention, elementwise, embedding, gate, layout, loss, matmul};
        use crate::ops::{norm, reduce, rope, softmax};
        vec![
            crate::optim::AdamParams::layout(),
            attention::FlashParams::layout(),
            elementwise::BinaryParams::layout(),
            elementwise::UnaryParams::layout(),
            elementwise::FillParams::layout(),
            elementwise::SwigluParams::layout(),
            embedding::GatherParams::layout(),
            embedding::ScatterParams::layout(),
            gate::GateParams::layout(),
            gate::GateBackwardParams::layout(),
            gate::TopKParams::layout(),
            layout::CopyParams::layout(),
            layout::CastParams::layout(),
            loss::CeParams::layout(),
            matmul::MatmulParams::layout(),
            matmul::SplitKParams::layout(),
            norm::NormParams::layout(),
            norm::NormBackwardParams::layout(),
            reduce::SumParams::layout(),
            rope::RopeParams::layout(),
            softmax::SoftmaxParams::layout(),
            softmax::SoftmaxBackwardParams::layout(),
        ]
    }

    /// A Rust field type written as WGSL, to compare with naga's member type.
    pub(crate) trait WgslType {
        fn wgsl() -> String;
    }
    impl WgslType for u32 {
        fn wgsl() -> String {
            "u32".into()
        }
    }
    impl WgslType for i32 {
        fn wgsl() -> String {
            "i32".into()
        }
    }
    impl WgslType for f32 {
        fn wgsl() -> String {
            "f32".into()
        }
    }
    impl<T: WgslType, const N: usize> WgslType for [T; N] {
        fn wgsl() -> String {
            format!("array<{}, {N}>", T::wgsl())
        }
    }

    /// The WGSL type of the field that `field` picks (the closure only names it).
    pub(crate) fn wgsl_type_of<P, T: WgslType>(_field: impl Fn(&P) -> &T) -> String {
        T::wgsl()
    }

    /// naga's type written as WGSL (scalars and fixed arrays; anything else as naga prints it).
    fn naga_type(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
        match &module.types[ty].inner {
            naga::TypeInner::Scalar(s) => match (s.kind, s.width) {
                (naga::ScalarKind::Uint, 4) => "u32".into(),
                (naga::ScalarKind::Sint, 4) => "i32".into(),
                (naga::ScalarKind::Float, 4) => "f32".into(),
                _ => format!("{s:?}"),
            },
            naga::TypeInner::Array {
                base,
                size: naga::ArraySize::Constant(n),
                ..
            } => format!("array<{}, {n}>", naga_type(module, *base)),
            other => format!("{other:?}"),
        }
    }

    /// Every built-in variant, parsed once.
    fn modules() -> BTreeMap<&'static str, naga::Module> {
        shaders::ALL
            .iter()
            .map(|s| {
                let module = naga::front::wgsl::parse_str(s.source)
                    .unwrap_or_else(|e| panic!("{}: {}", s.name, e.emit_to_string(s.source)));
                (s.name, module)
            })
            .collect()
    }

    /// The differences between a Rust params struct and the WGSL struct in one module.
    fn mismatches(layout: &ParamsLayout, shader: &str, module: &naga::Module) -> Vec<String> {
        let at = format!("{} vs {} in {shader}", layout.rust, layout.wgsl);
        let Some((_, ty)) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(layout.wgsl))
        else {
            return vec![format!("{at}: no WGSL struct of that name")];
        };
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            return vec![format!("{at}: not a struct")];
        };
        let mut out = Vec::new();
        if *span as usize != layout.size {
            out.push(format!(
                "{at}: {} bytes in Rust, {span} in WGSL",
                layout.size
            ));
        }
        let field = |name: &str, offset: usize, ty: &str| format!("{name}: {ty} at byte {offset}");
        let wgsl: Vec<String> = members
            .iter()
            .map(|m| {
                let name = m.name.as_deref().unwrap_or("?");
                field(name, m.offset as usize, &naga_type(module, m.ty))
            })
            .collect();
        let rust: Vec<String> = layout
            .fields
            .iter()
            .map(|(n, o, t)| field(n, *o, t))
            .collect();
        for i in 0..wgsl.len().max(rust.len()) {
            let (r, w) = (rust.get(i), wgsl.get(i));
            if r != w {
                let none = "none".to_string();
                let (r, w) = (r.unwrap_or(&none), w.unwrap_or(&none));
                out.push(format!("{at}: field {i} is {r} in Rust, {w} in WGSL"));
            }
        }
        out
    }

    #[test]
    fn every_params_struct_matches_its_wgsl_struct() {
        let modules = modules();
        let mut failures = Vec::new();
        for layout in all() {
            assert!(!layout.shaders.is_empty(), "{}: no shaders", layout.rust);
            for shader in &layout.shaders {
                failures.extend(mismatches(&layout, shader.name, &modules[shader.name]));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The name of the struct a module binds at `@group(0) @binding(0)`, its params block.
    fn params_struct(module: &naga::Module) -> Option<&str> {
        let params = naga::ResourceBinding {
            group: 0,
            binding: 0,
        };
        let (_, var) = module
            .global_variables
            .iter()
            .find(|(_, v)| v.binding.as_ref() == Some(&params))?;
        module.types[var.ty].name.as_deref()
    }

    #[test]
    fn every_built_in_variant_binds_a_registered_params_struct() {
        let layouts = all();
        let mut failures = Vec::new();
        for (shader, module) in modules() {
            let Some(wgsl) = params_struct(&module) else {
                failures.push(format!("{shader}: no params struct at binding 0"));
                continue;
            };
            let registered = layouts
                .iter()
                .any(|l| l.wgsl == wgsl && l.shaders.iter().any(|s| s.name == shader));
            if !registered {
                failures.push(format!(
                    "{shader}: its params struct {wgsl} is not declared with kernel_params! \
                     for this variant, or not listed in kernel_params::all"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// One Rust struct per (WGSL struct, variant): two would be ambiguous.
    #[test]
    fn no_variant_is_registered_twice() {
        let mut seen = BTreeMap::new();
        for layout in all() {
            for shader in layout.shaders {
                if let Some(other) = seen.insert(shader.name, layout.rust) {
                    panic!("{}: both {other} and {}", shader.name, layout.rust);
                }
            }
        }
    }
}
