//! Every WGSL kernel parses and validates with naga (the compiler wgpu uses), without a
//! GPU; `shaders::ALL` lists exactly the `.wgsl` files in `shaders/`, each under its own name.

use std::collections::BTreeSet;
use std::path::Path;

use hydralora::engine::shaders::ALL;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shaders_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders")
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
fn all_lists_every_file_on_disk_under_its_name() {
    let mut names = BTreeSet::new();
    let mut files = BTreeSet::new();
    for shader in ALL {
        assert!(names.insert(shader.name), "{} is listed twice", shader.name);
        // A variant (`file+variant`) is its constants, then the file.
        let (file, variant) = match shader.name.split_once('+') {
            Some((file, variant)) => (file, Some(variant)),
            None => (shader.name, None),
        };
        files.insert(file);
        let path = shaders_dir().join(format!("{file}.wgsl"));
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let prelude = shader
            .source
            .strip_suffix(on_disk.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{} does not hold the source listed as {}",
                    path.display(),
                    shader.name
                )
            });
        assert!(
            prelude.lines().all(|l| l.starts_with("const ")),
            "{}: a prelude holds constants only: {prelude:?}",
            shader.name
        );
        if variant.is_some() {
            assert!(
                !prelude.is_empty(),
                "{}: a variant with no constants",
                shader.name
            );
        }
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(shaders_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = files.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = on_disk.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "shaders on disk that shaders::ALL does not list: {missing:?}"
    );
}
