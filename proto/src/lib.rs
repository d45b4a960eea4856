//! Generated protobuf and gRPC code for `nubo.v1`. Domain code converts at the edge.
pub mod v1 {
    tonic::include_proto!("nubo.v1");
}
