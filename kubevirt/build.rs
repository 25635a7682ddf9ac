//! Generates the gRPC code of the kubelet device plugin API and KubeVirt's hook API with the
//! system's `protoc` (Debian's protobuf-compiler, installed by scripts/setup.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().build_server(true).build_client(true).compile_protos(
        &["proto/deviceplugin_v1beta1.proto", "proto/hooks_info.proto", "proto/hooks_v1alpha3.proto"],
        &["proto"],
    )?;
    Ok(())
}
