//! Compiles the gateway's protobuf API with protox (no system `protoc`) and keeps two file
//! descriptor sets: the API with its imports (server reflection; the JSON over HTTP routes are
//! read from its `google.api.http` options), and `google.rpc.Status` with its details (errors
//! written as JSON).

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // New files, never writes through old ones: a target directory seeded with hard links
    // (`cp -al`, as worktrees are) would otherwise change the other copies' generated code.
    for entry in fs::read_dir(&out)? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(path)?;
        }
    }

    let mut api = protox::Compiler::new(["proto"])?;
    api.include_imports(true)
        .include_source_info(true)
        .open_files([
            "dds/gateway/v1/gateway.proto",
            "dds/gateway/v1/rollout.proto",
        ])?;
    // Encoded by protox itself: a `prost_types` descriptor would drop the extension options.
    fs::write(
        out.join("dds_gateway_descriptor.bin"),
        api.encode_file_descriptor_set(),
    )?;

    let mut rpc = protox::Compiler::new(["proto"])?;
    rpc.include_imports(true)
        .open_files(["google/rpc/status.proto", "google/rpc/error_details.proto"])?;
    fs::write(
        out.join("google_rpc_descriptor.bin"),
        rpc.encode_file_descriptor_set(),
    )?;

    // Code for the gateway's own package only: the google files are there for their descriptors.
    let mut fds = api.file_descriptor_set();
    fds.file.retain(|file| file.package() == "dds.gateway.v1");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
