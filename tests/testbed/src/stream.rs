//! Reading what the `IMAGEBACKUP` stream holds, for tests and the demo: every stored message,
//! decoded into our typed events, in stream order.

use async_nats::jetstream;
use shared::events::{Payload, from_nats_message};

/// Every message stored in the stream so far, as (subject, payload); undecodable ones as
/// errors (a test asserts there are none).
pub async fn stored(js: &jetstream::Context) -> anyhow::Result<Vec<(String, Payload)>> {
    let mut stream = js.get_stream(shared::nats::STREAM_NAME).await?;
    let info = stream.info().await?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let event = from_nats_message(Some(&msg.headers), &msg.payload)?;
        out.push((msg.subject.to_string(), Payload::from_cloudevent(&event)?));
    }
    Ok(out)
}
