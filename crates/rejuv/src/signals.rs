//! Signal handling of the long-running commands.

use tokio_util::sync::CancellationToken;

/// Cancels the token on the first SIGINT/SIGTERM; a second one exits at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for n in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                tracing::info!("shutting down (send the signal again to force)");
                t.cancel();
            } else {
                eprintln!("rejuv: forced exit");
                std::process::exit(130);
            }
        }
    });
    token
}
