//! A model server's KV-event batch (or anything on its PUB socket): decoded or refused, never a
//! panic, a hang or an allocation beyond the payload's size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = kvevents::decode_batch(data) {
        // Whatever decodes encodes again and decodes to the same batch.
        let again = kvevents::encode_batch(&batch, kvevents::Layout::Map);
        let decoded = kvevents::decode_batch(&again).expect("re-encoded batches decode");
        assert_eq!(decoded.events, batch.events);
    }
});
