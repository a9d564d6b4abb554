//! The Wawp client.
pub struct WawpClient;
