//! What a topic can carry: one `Pod` type, bytes, or a type with invalid bit patterns
//! ([`Checked`]).

use crate::layout::TypeFingerprint;
use bytemuck::{CheckedBitPattern, NoUninit};
use std::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
    impl<T: bytemuck::Pod> Sealed for T {}
    impl Sealed for [u8] {}
    impl<T: bytemuck::CheckedBitPattern + bytemuck::NoUninit> Sealed for super::Checked<T> {}
}

/// A message type a topic can carry: any [`bytemuck::Pod`] type (read and written in place),
/// `[u8]` (byte messages of any length up to the topic's slot size), or [`Checked<T>`] for a
/// type that not every bit pattern is a value of (copied out and validated). Sealed.
pub trait Payload: sealed::Sealed {
    /// The fingerprint stored in the header, under `name` (the type's name by default).
    fn fingerprint(name: Option<&str>) -> TypeFingerprint;
    /// Size of a slot for this type, if fixed (`None` for bytes: the topic chooses).
    fn fixed_size() -> Option<usize>;
    /// Alignment the payload needs.
    fn align() -> usize;
    /// Whether a received message is copied out of the slot and validated before it is
    /// handed out (`Checked`), rather than read in place.
    fn validated() -> bool {
        false
    }
}

/// Payloads a subscriber reads in place, for which any bytes are a value: `Pod` types and
/// `[u8]`. (A [`Checked`] payload is copied and validated instead.) Sealed.
pub trait InPlace: Payload {}
impl<T: bytemuck::Pod> InPlace for T {}
impl InPlace for [u8] {}

/// The payload of a topic whose type `T` has bit patterns that are not values: a `bool`, an
/// enum, a `char`, a `NonZero` integer, or a struct of them
/// (`#[derive(CheckedBitPattern, NoUninit)]`). Shared memory may hold any bytes (a buggy or
/// hostile publisher), and a `T` made of invalid bytes would be undefined behaviour, so a
/// subscriber of `Checked<T>` copies each message out of its slot and checks it with
/// [`bytemuck::CheckedBitPattern`] before handing it out; a message that is not a valid `T` is
/// skipped with [`RecvError::InvalidBitPattern`](crate::RecvError::InvalidBitPattern). The
/// publisher sends whole values (`send`, `try_send`, `send_timeout`); there is no in-place loan.
///
/// ```
/// use shmbus::bytemuck::{CheckedBitPattern, NoUninit};
/// use shmbus::{Bus, Checked};
///
/// #[derive(Clone, Copy, Debug, PartialEq, CheckedBitPattern, NoUninit)]
/// #[repr(u8)]
/// enum Side {
///     Buy = 1,
///     Sell = 2,
/// }
///
/// #[derive(Clone, Copy, Debug, CheckedBitPattern, NoUninit)]
/// #[repr(C)]
/// struct Order {
///     price: u32,
///     side: Side,
///     urgent: bool,
///     _pad: [u8; 2],
/// }
///
/// # let bus = Bus::builder().prefix("doctest-checked.").build()?;
/// let mut orders = bus.publisher::<Checked<Order>>("orders").create()?;
/// let mut desk = bus.subscriber::<Checked<Order>>("orders").open()?;
/// orders.send(Order { price: 101, side: Side::Sell, urgent: false, _pad: [0; 2] })?;
/// let order = desk.try_recv()?.unwrap(); // copied and validated
/// assert_eq!(order.side, Side::Sell);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Checked<T>(PhantomData<fn() -> T>);

impl<T: CheckedBitPattern + NoUninit> Payload for Checked<T> {
    fn fingerprint(name: Option<&str>) -> TypeFingerprint {
        TypeFingerprint::typed::<T>(name.unwrap_or(std::any::type_name::<T>()))
    }
    fn fixed_size() -> Option<usize> {
        Some(size_of::<T>())
    }
    fn align() -> usize {
        align_of::<T>()
    }
    fn validated() -> bool {
        true
    }
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
