//! Compiles `proto/pyti/v1` with a vendored protoc, so no system protoc is needed,
//! and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/pyti/v1/job.proto",
        "proto/pyti/v1/master.proto",
        "proto/pyti/v1/worker.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pyti_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
