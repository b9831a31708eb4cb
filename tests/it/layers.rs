//! The layers of `src/` import each other one way only (see `../shared/architecture.md`
//! and the crate's documentation): this test reads every source file and fails on an
//! import that points the wrong way. `cargo test layers -- --nocapture` prints the
//! graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and the modules it may use besides itself.
const ALLOWED: [(&str, &[&str]); 8] = [
    ("sys", &[]),
    ("runtime", &[]),
    ("util", &["sys"]),
    ("contract", &["util"]),
    ("upstream", &["contract", "util", "sys", "runtime"]),
    ("types", &["contract", "upstream", "util", "sys"]),
    ("data_plane", &["contract", "util", "sys", "runtime"]),
    ("control_plane", &["contract", "data_plane", "util", "sys"]),
];

/// The composition root and the binary's edge: they wire everything.
const ROOT: [&str; 7] = [
    "lib", "main", "config", "host", "testing", "manifest", "cli",
];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules a file names as `crate::<module>`, outside comments.
fn imports_of(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).expect("read source");
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn layers_import_one_way_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        for import in imports_of(file) {
            if import == module || ROOT.contains(&module.as_str()) {
                graph.entry(module.clone()).or_default().insert(import);
                continue;
            }
            graph
                .entry(module.clone())
                .or_default()
                .insert(import.clone());
            let Some(may) = allowed.get(module.as_str()) else {
                wrong.push(format!("{}: a module of no known layer", file.display()));
                continue;
            };
            // Names the crate re-exports at its root (`crate::TrustedProxies`) are
            // the composition root's, and so above every layer.
            if !may.contains(&import.as_str()) {
                wrong.push(format!(
                    "{}: `{module}` uses `crate::{import}`",
                    file.display()
                ));
            }
        }
    }
    for (module, imports) in &graph {
        let imports: Vec<&str> = imports
            .iter()
            .map(String::as_str)
            .filter(|import| import != module)
            .collect();
        println!("{module} -> {}", imports.join(", "));
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
