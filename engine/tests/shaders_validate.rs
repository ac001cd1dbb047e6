//! Every WGSL kernel parses and validates with naga (the compiler wgpu uses), without a
//! GPU; each variant in `shaders::ALL` is its constants then its files, and every `.wgsl`
//! file under `shaders/` is used by some variant.

use std::collections::BTreeSet;
use std::path::Path;

use hydralora_engine::shaders::{ALL, COMPOSITION};
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
        assert!(
            consts.iter().all(|c| c.starts_with("const ")),
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
