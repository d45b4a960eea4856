fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &[
            "nubo/v1/nubo.proto",
            "nubo/v1/raft.proto",
            "nubo/v1/trigger.proto",
            "nubo/v1/worker.proto",
        ],
        &["."],
    )?;
    Ok(())
}
