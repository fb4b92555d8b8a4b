//! What a topic can carry: one `Pod` type, or bytes.

use crate::layout::TypeFingerprint;

mod sealed {
    pub trait Sealed {}
    impl<T: bytemuck::Pod> Sealed for T {}
    impl Sealed for [u8] {}
}

/// A message type a topic can carry: any [`bytemuck::Pod`] type (read and written in place), or
/// `[u8]` (byte messages of any length up to the topic's slot size). Sealed.
pub trait Payload: sealed::Sealed {
    /// The fingerprint stored in the header, under `name` (the type's name by default).
    fn fingerprint(name: Option<&str>) -> TypeFingerprint;
    /// Size of a slot for this type, if fixed (`None` for bytes: the topic chooses).
    fn fixed_size() -> Option<usize>;
    /// Alignment the payload needs.
    fn align() -> usize;
}

impl<T: bytemuck::Pod> Payload for T {
    fn fingerprint(name: Option<&str>) -> TypeFingerprint {
        TypeFingerprint::typed::<T>(name.unwrap_or(std::any::type_name::<T>()))
    }
    fn fixed_size() -> Option<usize> {
        Some(size_of::<T>())
    }
    fn align() -> usize {
        align_of::<T>()
    }
}

impl Payload for [u8] {
    fn fingerprint(_: Option<&str>) -> TypeFingerprint {
        TypeFingerprint::bytes()
    }
    fn fixed_size() -> Option<usize> {
        None
    }
    fn align() -> usize {
        8
    }
}
