//! Generates the tonic client and server code from `protos/`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "protos/storage.proto",
                "protos/common.proto",
                "protos/meta.proto",
            ],
            &["protos"],
        )?;
    Ok(())
}
