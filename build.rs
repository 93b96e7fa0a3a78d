//! Compiles the gateway's protobuf API with protox (no system `protoc`) and keeps two file
//! descriptor sets: the API with its imports (server reflection; the JSON over HTTP routes are
//! read from its `google.api.http` options), and `google.rpc.Status` with its details (errors
//! written as JSON). Also tells the crate its git revision, for `dds_gateway_build_info`.

use std::{env, fs, path::Path, path::PathBuf};

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
        .open_file("dds/gateway/v1/gateway.proto")?;
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
    git_revision();
    Ok(())
}

/// The git revision `dds_gateway_build_info` shows: `GIT_REVISION` when the build's environment
/// has it (e.g. an image built without `.git`), else, in release builds only, `git rev-parse
/// HEAD` (a debug build would otherwise recompile the crate after every commit). Without either,
/// the metric carries the version alone.
fn git_revision() {
    println!("cargo:rerun-if-env-changed=GIT_REVISION");
    if let Ok(revision) = env::var("GIT_REVISION") {
        println!(
            "cargo:rustc-env=DDS_GATEWAY_GIT_REVISION={}",
            revision.trim()
        );
        return;
    }
    if env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(revision) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    // Build again when HEAD moves: HEAD itself, the branch it names, the packed refs.
    let mut watched = vec![
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=DDS_GATEWAY_GIT_REVISION={revision}");
}
