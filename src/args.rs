//! Argument parsers that several subcommands share (`run` and `plan` take the same node
//! labels and socket modes). Errors name the option.

use std::collections::BTreeMap;

/// `--node-labels k=v,...` as a map (empty items are ignored; a key may not be empty).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--node-labels: {kv:?} is not k=v"))?;
        if k.is_empty() {
            return Err(format!("--node-labels: {kv:?} has an empty key"));
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// A socket mode argument, checked to be octal like 0660 and kept as given.
pub fn parse_mode_arg(s: &str) -> Result<String, String> {
    switchyard_dataplane::config::parse_socket_mode(s)
        .map(|_| s.to_string())
        .ok_or_else(|| format!("{s:?} is not an octal mode like 0660"))
}
