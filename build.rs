//! Compiles the gateway's protobuf API with protox (no system `protoc`) and keeps the file
//! descriptor set for server reflection.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["dds/gateway/v1/gateway.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // `compile_fds` generates code only; reflection needs the descriptor set written by hand.
    fs::write(out.join("dds_gateway_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
