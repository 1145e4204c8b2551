//! Compiles `proto/*.proto` into buffa messages and Connect service traits.
//! `protox` (a pure-Rust protobuf compiler) produces the descriptor set, so
//! building the workspace needs no `protoc` binary on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["process.proto", "filesystem.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;
    let fds = compiler.encode_file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_path = out.join("envd.fds");
    std::fs::write(&fds_path, fds)?;
    connectrpc_build::Config::new()
        .files(&files)
        .descriptor_set(&fds_path)
        .include_file("_connectrpc.rs")
        .emit_rerun_directives(false)
        .compile()?;
    Ok(())
}
