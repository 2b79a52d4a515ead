//! The README's config examples are what operators copy: each ```toml block must be a valid
//! config (with a `[[node]]` added when the block is only a section); only files it names under
//! /etc/nodegate may be missing.

#[test]
fn every_toml_block_in_the_readme_is_a_valid_config() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").unwrap();
        blocks.push(&body[..end]);
        rest = &body[end..];
    }
    assert!(blocks.len() >= 3, "{} blocks", blocks.len());
    let mut failures = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let mut text = block.to_string();
        if !text.contains("[[node]]") {
            text.push_str("\n[[node]]\nname = \"n\"\nurl = \"http://127.0.0.1:14265\"\n");
        }
        match nodegate::Config::parse(&text, &format!("README block {i}")) {
            // A file the example names (a key, a certificate) is the operator's to provide.
            Err(e) if e.to_string().contains("cannot read `/etc/nodegate/") => {}
            Err(e) => failures.push(format!("block {i}: {e}\n{block}")),
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
