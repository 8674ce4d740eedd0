//! Compiles the agent's gRPC API (`proto/agent.proto`) into Rust: messages,
//! client and server.

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure().compile_protos(&["proto/agent.proto"], &["proto"])
}
