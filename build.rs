//! Compiles the contract in `proto/` with protox (pure Rust: no protoc needed).
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/backchannel/v1/backchannel.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files([proto])?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("backchannel_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Maps encode in key order, so equal requests encode equally.
        .btree_map(".")
        // Our codec: a request that does not decode is INVALID_ARGUMENT, not
        // INTERNAL. Clients get it too, so it bounds no size (see its docs).
        .codec_path("crate::codec::StrictCodec")
        // Hand-written, so that events go out as the bytes encoded at commit.
        .extern_path(
            ".backchannel.v1.SubscribeResponse",
            "crate::wire::SubscribeResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
