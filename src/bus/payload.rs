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

/// A private buffer of whole words, aligned for a payload type: an Overwrite publisher's
/// staging area and an Overwrite subscriber's copy. Allocated once, at create or open.
#[derive(Debug)]
pub(crate) struct AlignedWords {
    buf: Box<[u64]>,
    /// Offset (in words) of the first word aligned for the payload.
    start: usize,
    words: usize,
}

impl AlignedWords {
    /// Room for `bytes` bytes rounded up to words, aligned to `align` (a power of two).
    pub(crate) fn new(bytes: usize, align: usize) -> Self {
        let words = bytes.div_ceil(8);
        let extra = align.div_ceil(8).saturating_sub(1);
        let buf = vec![0u64; words + extra].into_boxed_slice();
        let misalign = buf.as_ptr() as usize % align.max(8);
        let start = if misalign == 0 {
            0
        } else {
            (align - misalign) / 8
        };
        Self { buf, start, words }
    }

    pub(crate) fn words(&self) -> &[u64] {
        &self.buf[self.start..self.start + self.words]
    }

    pub(crate) fn words_mut(&mut self) -> &mut [u64] {
        &mut self.buf[self.start..self.start + self.words]
    }

    pub(crate) fn ptr(&mut self) -> *mut u8 {
        self.words_mut().as_mut_ptr() as *mut u8
    }
}
