//! Subscribe to image-backup's events with plain async-nats, decoded from CloudEvents:
//! `cargo run -p image-backup-shared --example subscribe -- nats://127.0.0.1:4222`

use futures::StreamExt;
use shared::events::{Payload, from_nats_message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let nc = async_nats::connect(url).await?;
    let mut events = futures::stream::select(
        nc.subscribe("imagebackup.image.>").await?,
        nc.subscribe("imagebackup.workload.rolledout.>").await?,
    );
    while let Some(m) = events.next().await {
        match from_nats_message(m.headers.as_ref(), &m.payload)
            .and_then(|e| Payload::from_cloudevent(&e))
        {
            Ok(payload) => println!(
                "{} {}",
                payload.event_type(),
                serde_json::to_string(&payload_data(&payload))?
            ),
            Err(e) => eprintln!("{}: not an image-backup event: {e}", m.subject),
        }
    }
    Ok(())
}

fn payload_data(p: &Payload) -> serde_json::Value {
    match p {
        Payload::ImageCompleted(c) => serde_json::to_value(c),
        Payload::ImageFailed(f) => serde_json::to_value(f),
        Payload::WorkloadRolledOut(r) => serde_json::to_value(r),
        Payload::WorkloadChanged(w) => serde_json::to_value(w),
        Payload::WorkloadReverted(r) => serde_json::to_value(r),
    }
    .unwrap_or_default()
}
