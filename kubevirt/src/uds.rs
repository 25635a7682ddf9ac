//! gRPC over Unix sockets, both ways: the kubelet and virt-launcher speak to their plugins and
//! sidecars only through sockets in a directory they share with them.

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
pub use tonic::transport::Channel;
use tonic::transport::{Endpoint, Uri};

/// A channel to the gRPC server listening on `path`; the connection is made now, so an error
/// means nobody listens there.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is never dialled: the connector below is, and gRPC needs an authority.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
}

/// Listens on `path`, replacing a socket left there by an earlier run (a file that is not a
/// socket is an error, never removed).
pub fn bind(path: &Path) -> std::io::Result<UnixListenerStream> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    Ok(UnixListenerStream::new(UnixListener::bind(path)?))
}
