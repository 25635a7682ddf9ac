//! switchyard's control plane: turns cluster state into dataplane configuration.
