//! The NetworkAttachmentDefinitions in examples/cni are configurations the plugin accepts.

use switchyard_cni::config::{Mode, NetConf};

#[test]
fn the_example_nads_are_valid_plugin_configs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cni");
    let mut modes = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let nad: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(nad["kind"].as_str(), Some("NetworkAttachmentDefinition"), "{}", path.display());
        let config =
            nad["spec"]["config"].as_str().unwrap_or_else(|| panic!("{}: no spec.config", path.display()));
        let conf = NetConf::parse(config.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(conf.name, nad["metadata"]["name"].as_str().unwrap(), "{}", path.display());
        modes.push(conf.mode);
    }
    modes.sort_by_key(|m| *m == Mode::Vhostuser);
    assert_eq!(modes, [Mode::Veth, Mode::Vhostuser], "one example per mode");
}
