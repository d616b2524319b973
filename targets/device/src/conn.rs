//! Connected stream sockets, Unix or TCP: what the connection code needs
//! of either.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected stream socket (`UnixStream`, `TcpStream`).
pub trait Conn: Read + Write + Send + Sized
where
    for<'x> &'x Self: Write,
{
    /// A second handle to the same socket (for writing while reading).
    fn try_clone(&self) -> std::io::Result<Self>;
    /// Timeout of each read.
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
    /// Timeout of each write.
    fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
    /// Non-blocking mode.
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
    /// Closes both directions.
    fn shutdown(&self) -> std::io::Result<()>;
    /// Called once after accept (TCP: no Nagle delay for small answers).
    fn accepted(&self) {}
}

macro_rules! conn {
    ($t:ty) => {
        fn try_clone(&self) -> std::io::Result<Self> {
            <$t>::try_clone(self)
        }
        fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
            <$t>::set_read_timeout(self, d)
        }
        fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
            <$t>::set_write_timeout(self, d)
        }
        fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
            <$t>::set_nonblocking(self, on)
        }
        fn shutdown(&self) -> std::io::Result<()> {
            <$t>::shutdown(self, std::net::Shutdown::Both)
        }
    };
}

impl Conn for UnixStream {
    conn!(UnixStream);
}

impl Conn for TcpStream {
    conn!(TcpStream);
    fn accepted(&self) {
        let _ = self.set_nodelay(true);
    }
}
