//! The crate's top-level modules form layers that only point down: no module reaches, through
//! `crate::` paths, one that reaches it back. Read from the source, so a new cycle fails here
//! before review has to find it. (Tests inside a module may use anything and are not counted.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its code names through `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap().split(',').map(|s| s.trim()).collect(),
                None => vec![rest],
            };
            for name in names {
                let module: String = name.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !module.is_empty() && module != top {
                    deps.insert(module);
                }
            }
        }
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

#[test]
fn top_level_modules_have_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 15, "the source was not found: {graph:?}");
    // Peel off modules that depend on nothing left; whatever cannot be peeled is in a cycle.
    let mut left = graph.clone();
    let mut layers: Vec<Vec<String>> = Vec::new();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(!free.is_empty(), "these modules reach each other in a cycle: {left:#?}");
        for m in &free {
            left.remove(m);
        }
        layers.push(free);
    }
    // The layers, bottom first, for whoever wonders where a module stands.
    for (i, layer) in layers.iter().enumerate() {
        eprintln!("layer {i}: {}", layer.join(", "));
    }
}
