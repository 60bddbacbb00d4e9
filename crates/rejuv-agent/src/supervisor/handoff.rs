//! State hand-off between instances: the agent fetches a running instance's state from its
//! service and hands it to another.

use super::error::SupervisorError;
use super::instance::Instance;
use super::table::Supervisor;
use rejuv_core::api::InstanceState;
use std::sync::Arc;

impl Supervisor {
    /// GET the instance's `handoff.export`.
    pub async fn export_state(
        &self,
        id: &str,
    ) -> Result<(bytes::Bytes, Option<String>), SupervisorError> {
        let (inst, handoff) = self.handoff_target(id)?;
        let url = format!("http://{}{}", inst.addr, handoff.export);
        let herr = |reason: String| SupervisorError::Handoff {
            id: id.into(),
            method: "GET",
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .timeout(handoff.hold)
            .send()
            .await
            .map_err(|e| herr(e.to_string()))?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(|e| herr(e.to_string()))?;
        if !status.is_success() {
            return Err(herr(format!("answered {status}: {}", excerpt(&body))));
        }
        Ok((body, ctype))
    }

    /// PUT to the instance's `handoff.import`.
    pub async fn import_state(&self, id: &str, body: bytes::Bytes) -> Result<(), SupervisorError> {
        let (inst, handoff) = self.handoff_target(id)?;
        let url = format!("http://{}{}", inst.addr, handoff.import);
        let herr = |reason: String| SupervisorError::Handoff {
            id: id.into(),
            method: "PUT",
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .put(&url)
            .timeout(handoff.hold)
            .body(body)
            .send()
            .await
            .map_err(|e| herr(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(herr(format!("answered {status}: {}", excerpt(&body))));
        }
        Ok(())
    }

    pub(super) fn handoff_target(
        &self,
        id: &str,
    ) -> Result<(Arc<Instance>, rejuv_core::config::HandoffConfig), SupervisorError> {
        let inst = self
            .get(id)
            .ok_or_else(|| SupervisorError::NotFound { id: id.into() })?;
        let handoff = inst
            .spec
            .handoff
            .clone()
            .ok_or_else(|| SupervisorError::NoHandoff {
                id: id.into(),
                service: inst.service.clone(),
            })?;
        let state = inst.state();
        if !matches!(
            state,
            InstanceState::Starting | InstanceState::Running | InstanceState::Unhealthy
        ) {
            return Err(SupervisorError::NotServing {
                id: id.into(),
                state,
            });
        }
        Ok((inst, handoff))
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.trim().to_string()
}
