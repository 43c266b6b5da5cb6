//! Builds the socket probe with clang-19 when it is installed, else uses the committed
//! object (`bpf/socket_probe.bpf.o`). A test checks that a fresh build equals the committed
//! object byte for byte, so both routes load the same program.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "socket_probe.bpf.c";
const OBJECT: &str = "socket_probe.bpf.o";

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed=bpf/{SOURCE}");
    println!("cargo:rerun-if-changed=bpf/probe_types.h");
    println!("cargo:rerun-if-changed=bpf/{OBJECT}");
    println!("cargo:rerun-if-env-changed=FLOWEX_BPF_CLANG");
    let clang = std::env::var("FLOWEX_BPF_CLANG").unwrap_or_else(|_| "clang-19".into());
    let built = out.join(OBJECT);
    let status = Command::new(&clang)
        .current_dir(&dir)
        .args(compile_args(&dir))
        .arg(&built)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed on bpf/{SOURCE} ({s})"),
        Err(_) => {
            println!(
                "cargo:warning={clang} not found: using the committed bpf/{OBJECT} (apt install clang-19 libbpf-dev to build it)"
            );
            std::fs::copy(dir.join(OBJECT), &built).expect("copying the committed probe object");
        }
    }
}

/// The flags the committed object was built with (see tests/object.rs).
fn compile_args(dir: &Path) -> Vec<String> {
    vec![
        "-target".into(),
        "bpf".into(),
        "-O2".into(),
        "-g".into(),
        format!("-fdebug-prefix-map={}=.", dir.display()),
        "-Wall".into(),
        "-Werror".into(),
        "-c".into(),
        SOURCE.into(),
        "-o".into(),
    ]
}
