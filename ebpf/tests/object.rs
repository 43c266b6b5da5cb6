//! The committed probe object (used where clang-19 is missing) must be exactly what the
//! source builds to, or the two build routes would load different programs.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_object_matches_a_fresh_build() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let out = std::env::temp_dir().join(format!("flowex-probe-{}.o", std::process::id()));
    let clang = std::env::var("FLOWEX_BPF_CLANG").unwrap_or_else(|_| "clang-19".into());
    let status = Command::new(&clang)
        .current_dir(&dir)
        .args(["-target", "bpf", "-O2", "-g"])
        .arg(format!("-fdebug-prefix-map={}=.", dir.display()))
        .args(["-Wall", "-Werror", "-c", "socket_probe.bpf.c", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("{clang} is needed for this check (apt install clang-19 libbpf-dev): {e}")
        });
    assert!(status.success(), "{clang} failed");
    let fresh = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let committed = std::fs::read(dir.join("socket_probe.bpf.o")).unwrap();
    assert!(
        fresh == committed,
        "bpf/socket_probe.bpf.o is stale: rebuild it (see build.rs) and commit it"
    );
}
