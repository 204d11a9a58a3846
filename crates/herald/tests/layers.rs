//! The server's modules are layers (docs/architecture.md): each imports only from the layers below
//! it, and no two modules import each other, directly or around a circle. This test reads every
//! `crate::` and `super::` path of `src/` (outside `#[cfg(test)]` modules) and fails on an import
//! that goes up, across two sibling layers, or around a circle, naming the file and the path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first; folders on one line are one layer and must not import each other.
const LAYERS: &[&[&str]] = &[
    &["config"],
    &["core"],
    &["brokers", "hooks"],
    &["node"],
    &["edges"],
    &["app"],
];

fn layer_of(module: &[String]) -> Option<(usize, &'static str)> {
    let top = module.first()?;
    LAYERS.iter().enumerate().find_map(|(i, folders)| {
        folders
            .iter()
            .find(|folder| **folder == top.as_str())
            .map(|folder| (i, *folder))
    })
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are both module `a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` modules (tests may
/// reach anywhere) and string contents (they are not imports).
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its closing brace at the same indentation.
            let indent = line.len() - trimmed.len();
            for next in lines.by_ref() {
                let t = next.trim_start();
                if next.len() - t.len() == indent && (t.starts_with('}') || t.ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let mut in_string = false;
        let mut previous = ' ';
        for c in line.chars() {
            if c == '"' && previous != '\\' {
                in_string = !in_string;
            } else if !in_string {
                code.push(c);
            }
            previous = c;
        }
        code.push('\n');
    }
    code
}

/// Every path that starts with `crate::` or `super::`, with `use` groups (`a::{b, c::d}`)
/// expanded.
fn paths_of(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        if starts_word && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let (text, end) = read_path(&bytes, i);
            expand(&text, &mut out);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The path at `start`, braces included, and where it ends.
fn read_path(chars: &[char], start: usize) -> (String, usize) {
    let mut depth = 0;
    let mut i = start;
    let mut text = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => break,
            _ => {}
        }
        if !c.is_whitespace() {
            text.push(c);
        }
        i += 1;
    }
    (text, i)
}

fn expand(path: &str, out: &mut Vec<String>) {
    let Some(open) = path.find('{') else {
        out.push(path.trim_end_matches("::").to_string());
        return;
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.len().saturating_sub(1)];
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    for item in items.into_iter().filter(|i| !i.is_empty()) {
        if item == "self" {
            out.push(prefix.trim_end_matches("::").to_string());
        } else {
            expand(&format!("{prefix}{item}"), out);
        }
    }
}

/// The module a path names: its longest prefix that is a module of the crate.
fn resolve(from: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = if segments[0] == "crate" {
        segments.remove(0);
        Vec::new()
    } else {
        // `super` is the parent of the module the file is (a `mod.rs` is its folder's module).
        let mut base = from.to_vec();
        while segments.first() == Some(&"super") {
            segments.remove(0);
            base.pop();
        }
        base
    };
    let mut found = None;
    for segment in segments {
        base.push(segment.to_string());
        if modules.contains(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

fn is_within(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

struct Import {
    file: String,
    path: String,
    target: Vec<String>,
}

fn imports() -> BTreeMap<Vec<String>, Vec<Import>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "main.rs" | "lib.rs") {
            continue;
        }
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("readable source");
        let mut list: Vec<Import> = Vec::new();
        for path in paths_of(&code_of(&text)) {
            let Some(target) = resolve(&module, &path, &modules) else {
                continue;
            };
            // A module and the modules inside it are one unit here: a folder's `mod.rs`
            // re-exports its children, and the children use what their folder defines.
            if is_within(&target, &module) || is_within(&module, &target) {
                continue;
            }
            list.push(Import {
                file: file
                    .strip_prefix(&src)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
                path,
                target,
            });
        }
        graph.insert(module, list);
    }
    graph
}

#[test]
fn no_module_imports_from_a_layer_above_or_beside_it() {
    let mut wrong = Vec::new();
    for (module, list) in imports() {
        let Some((from_layer, from_folder)) = layer_of(&module) else {
            wrong.push(format!(
                "src/{}: in no layer (add its folder to LAYERS and docs/architecture.md)",
                module.join("/")
            ));
            continue;
        };
        for import in list {
            let Some((to_layer, to_folder)) = layer_of(&import.target) else {
                continue;
            };
            if to_layer > from_layer || (to_layer == from_layer && to_folder != from_folder) {
                wrong.push(format!(
                    "src/{} uses {} ({} may not import {})",
                    import.file, import.path, from_folder, to_folder
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_around_a_circle() {
    let graph = imports();
    let edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = graph
        .iter()
        .map(|(module, list)| {
            let targets = list
                .iter()
                .filter_map(|i| graph.get_key_value(&i.target).map(|(k, _)| k))
                .collect();
            (module, targets)
        })
        .collect();
    let mut circles = Vec::new();
    for start in edges.keys() {
        // A path from one of `start`'s imports back to `start` is a circle through it.
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(&Vec<String>, Vec<&Vec<String>>)> = vec![(*start, vec![*start])];
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(at).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    circles.push(format!("{} -> {}", names.join(" -> "), start.join("::")));
                } else if seen.insert(*next) {
                    let mut longer = trail.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    assert!(
        circles.is_empty(),
        "modules importing each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checker_sees_groups_super_and_inline_paths() {
    let code = code_of(
        "use crate::a::{b, c::{d, e}};\nuse super::f;\nfn g() { crate::h::i(); \"crate::no\"; }\n// crate::nor\n#[cfg(test)]\nmod tests {\n    use crate::neither;\n}\n",
    );
    let paths = paths_of(&code);
    assert_eq!(
        paths,
        [
            "crate::a::b",
            "crate::a::c::d",
            "crate::a::c::e",
            "super::f",
            "crate::h::i"
        ]
    );
    let modules: BTreeSet<Vec<String>> = [vec!["x".to_string()], vec!["x".into(), "y".into()]]
        .into_iter()
        .collect();
    let from = vec!["x".to_string(), "z".to_string()];
    assert_eq!(
        resolve(&from, "super::y::Thing", &modules),
        Some(vec!["x".into(), "y".into()])
    );
    assert_eq!(
        resolve(&from, "crate::x::Other", &modules),
        Some(vec!["x".into()])
    );
}

/// The modules directly inside a layer folder, as the picture names them (`hub`, `session/`).
fn modules_of_folder(src: &Path, folder: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src.join(folder))
        .expect("layer folder")
        .map(|e| e.expect("dir entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            if p.is_dir() {
                Some(format!("{name}/"))
            } else {
                let stem = name.strip_suffix(".rs")?;
                (stem != "mod").then(|| stem.to_string())
            }
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_architecture_page_shows_the_layers_as_they_are() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = crate_dir.join("../../docs");
    let page = std::fs::read_to_string(docs.join("architecture.md")).expect("docs/architecture.md");
    let marker = "<!-- layers (top first), checked by crates/herald/tests/layers.rs -->";
    let table = page
        .split(marker)
        .nth(1)
        .expect("the layer table's marker in docs/architecture.md");
    let rows: Vec<Vec<String>> = table
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let folders = row.split('|').nth(2).unwrap_or("");
            folders
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|f| f.trim_end_matches('/').to_string())
                .collect()
        })
        .collect();
    let expected: Vec<Vec<String>> = LAYERS
        .iter()
        .rev()
        .map(|folders| folders.iter().map(|f| f.to_string()).collect())
        .collect();
    assert_eq!(
        rows, expected,
        "docs/architecture.md's layer table (folders, top first) differs from the layers checked here"
    );
    let picture = std::fs::read_to_string(docs.join("layers.svg")).expect("docs/layers.svg");
    let src = crate_dir.join("src");
    let mut missing = Vec::new();
    for folder in LAYERS.iter().flat_map(|l| l.iter()) {
        for module in modules_of_folder(&src, folder) {
            let alone = format!(">{module}<");
            let qualified = format!(">{folder}/{module}<");
            if !picture.contains(&alone) && !picture.contains(&qualified) {
                missing.push(format!("{folder}/{module}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/layers.svg lacks {missing:?}: run python3 scripts/draw-layers.py"
    );
}

#[test]
fn every_source_path_the_docs_name_exists() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = crate_dir.join("../..");
    let src = crate_dir.join("src");
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let layer_folders: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    let mut missing = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).expect("readable page");
        // Paths in code spans: `crates/herald/src/…` from the root, `core/hub.rs` from src.
        for span in text.split('`').skip(1).step_by(2) {
            let path = if let Some(rest) = span.strip_prefix("crates/herald/src/") {
                src.join(rest)
            } else if layer_folders
                .iter()
                .any(|f| span.starts_with(&format!("{f}/")))
                && (span.ends_with(".rs") || span.ends_with('/'))
                && !span.contains(' ')
            {
                src.join(span)
            } else {
                continue;
            };
            if !path.exists() {
                missing.push(format!(
                    "{}: `{span}`",
                    page.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name source paths that do not exist:\n{}",
        missing.join("\n")
    );
}
