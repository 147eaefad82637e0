//! The codec of the long-lived streams (`Market.Stream`): tonic's prost codec starting
//! with small buffers. Each subscriber's stream holds a decode buffer (its requests) and an
//! encode buffer (its responses) for as long as it lasts, and tonic starts both at 8 KiB:
//! with 2,000 idle subscribers under heaptrack they were 16 of the ~57 KiB each connection
//! held. Requests are a few hundred bytes, and a response buffer grows to the message it
//! carries either way, so a small start costs a busy stream one early reallocation and
//! saves an idle one most of the 16 KiB.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes each buffer starts with.
const START_BYTES: usize = 512;

/// How much a response buffer may hold before tonic hands it to HTTP/2: tonic's default.
const YIELD_THRESHOLD: usize = 32 << 10;

/// A prost codec whose buffers start at [`START_BYTES`].
#[derive(Debug)]
pub struct StreamCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StreamCodec<T, U> {
    fn default() -> Self {
        StreamCodec(PhantomData)
    }
}

impl<T, U> Codec for StreamCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(START_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(START_BYTES, YIELD_THRESHOLD))
    }
}
