//! Compiles the sandbox init (`runtime/init/init.c`) into an executable the
//! worker embeds and installs at `/var/runtime/init` of every sandbox.
//! Linked statically when the C library allows it, so it does not depend on
//! the sandbox's view of the host's shared libraries.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "runtime/init/init.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("nubo-init");
    let compiler = cc::Build::new().opt_level(2).get_compiler();
    let build = |extra: &[&str]| {
        let mut cmd: Command = compiler.to_command();
        cmd.args(["-O2", "-Wall", "-Wextra", "-Werror"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .arg(src);
        cmd.status().map(|s| s.success()).unwrap_or(false)
    };
    if !build(&["-static"]) && !build(&[]) {
        panic!(
            "compiling {src} failed: the worker needs a C compiler (clang or gcc); scripts/setup.sh installs one"
        );
    }
}
