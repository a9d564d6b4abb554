//! The Wawp client (placeholder until the provider branch lands).
use super::*;
use crate::config::{InstanceConfig, ProviderSettings};

pub struct WawpClient;

impl WawpClient {
    pub fn new(
        _name: &str,
        _inst: &InstanceConfig,
        _s: &ProviderSettings,
    ) -> Result<WawpClient, String> {
        Err("not built yet".into())
    }
}

impl Provider for WawpClient {
    async fn new_message_id(&self) -> Result<String, ProviderError> {
        Err(ProviderError::Unavailable("x".into()))
    }
    async fn send_status(&self, _s: &OutgoingStatus<'_>) -> SendOutcome {
        SendOutcome::Permanent {
            reason: "x".into(),
            http_status: 400,
        }
    }
    async fn delete_status(&self, _m: &str) -> SendOutcome {
        SendOutcome::Permanent {
            reason: "x".into(),
            http_status: 400,
        }
    }
    async fn find_status(&self, _q: &StatusQuery<'_>) -> Lookup {
        Lookup::Absent
    }
    async fn probe(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    fn supplies_id(&self) -> bool {
        true
    }
}
