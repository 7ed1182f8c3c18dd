//! The crate's house rules as a test: no circle among its files, and no import running up the
//! layers `src/lib.rs` declares (a room uses only rooms declared before it). The graph is
//! `scripts/modgraph.py`'s, which also prints it for a newcomer.

use std::process::Command;

#[test]
fn modules_form_layers_without_circles() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/modgraph.py"))
        .arg("--strict")
        .output()
        .expect("python3 runs scripts/modgraph.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "module graph breaks the layers:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 circles among files"), "{text}");
    assert!(text.contains("0 arrows running up"), "{text}");
}
