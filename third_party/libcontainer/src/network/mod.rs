#[cfg(feature = "net-devices")]
pub mod address;
pub mod cidr;
#[cfg(feature = "net-devices")]
mod client;
#[cfg(feature = "net-devices")]
mod fake;
#[cfg(feature = "net-devices")]
pub mod link;
#[cfg(feature = "net-devices")]
pub mod network_device;
#[cfg(feature = "net-devices")]
mod traits;
#[cfg(feature = "net-devices")]
pub mod wrapper;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Nix(#[from] nix::Error),
    #[error(transparent)]
    IO(#[from] std::io::Error),
    #[error("failed to initialize NetlinkClient")]
    ClientInitializeError,
    #[error("network devices (linux.netDevices) need libcontainer's net-devices feature")]
    Unsupported,
}

#[cfg(feature = "net-devices")]
type Result<T> = std::result::Result<T, NetworkError>;

/// Represents a response from a Netlink operation.
///
/// This enum encapsulates the possible outcomes of a Netlink operation:
/// - Success: The operation completed successfully with a response of type T
/// - Error: The operation failed with an error code
/// - Done: The operation completed with no more data to process
#[derive(Debug)]
pub enum NetlinkResponse<T> {
    Success(T),
    Error(i32),
    Done,
    None,
}
