//! `Ingest.Publish` request conversion on arbitrary bytes: decoded as a request, each
//! event's body and instrument name are checked as the server checks them, and are
//! accepted or refused with a status, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use raven_proto::pb;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::PublishRequest::decode(data) else {
        return;
    };
    for event in &request.events {
        let _ = raven_server::api::ingest::parse_event(event);
        let _ = raven_model::InstrumentName::parse(&event.instrument);
    }
});
