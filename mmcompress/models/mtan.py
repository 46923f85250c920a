"""SegNet with task-specific attention (MTAN), for dense multi-task prediction such as NYUv2.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. One SegNet
(Badrinarayanan et al. 2017) is shared by all tasks; every task owns a chain of small attention
modules, one per encoder and decoder block, that picks its features out of the shared ones.

Shared backbone (``backbone``): a VGG16-style encoder of 5 blocks of 3×3 convolution + batch
norm + ReLU (channels `filters`, default 64, 128, 256, 512, 512; `convs_per_block` = 2, 2, 3, 3,
3 convolutions, the 13 convolutions of VGG16 as in SegNet and the public MTAN code; a shorter
`filters` gives a shallower network of as many blocks, which the tests use to compile less), each
block followed by a 2×2 max pooling that remembers where each maximum was; then a mirror
decoder of as many blocks (at the default depth 3, 3, 3, 2, 2 convolutions), each preceded by
max unpooling with the indices of the matching encoder pooling. Decoder block ``j`` of ``n``
(in the order they run, ``dec0`` at 1/2^(n-1) resolution, 1/16 at the default depth, to
``dec{n-1}`` at full resolution) outputs ``filters[n - 2 - j]`` channels, and ``filters[0]``
for the last one.

Task attention, after Eq. (1) of the paper: in every block ``j`` the shared network gives
``u`` (the output of the block's first convolution) and ``p`` (that of its last). Task ``k``
computes a soft mask ``a = g([u; h(â_prev)])`` with ``g`` = 1×1 conv → BN → ReLU → 1×1 conv
→ BN → sigmoid (task-specific) and multiplies it into the shared features: ``â = a ⊙ p``.
``h`` passes the previous block's attended features through a 3×3 conv + BN + ReLU ``f`` and
matches the resolution: in the encoder ``f`` then 2×2 max pooling (the first block has no
previous features and uses ``u`` alone), in the decoder bilinear ×2 up-sampling then ``f``.
``f`` is shared by all tasks (one set of weights per block, as the paper's "shared feature
extractor" and the public code). Each task's last attended features feed its head: a 3×3
convolution, then a 1×1 convolution to its outputs (no activation between them, as in MTAN);
a task flagged in `normalize` has its output divided by its ℓ2 norm (surface normals).

Departures from the public MTAN code, all deliberate:

- The decoder's attention takes ``u`` = the first convolution's output of the decoder block, as
  in the paper; the public code feeds it the unpooled block input instead. Then every ``g``
  sees ``2 × C`` channels, whatever `filters` is.
- The next decoder block receives the attended features ``â`` of this one, as in the paper;
  the public code passes the mask ``a`` on.
- Up-sampling of attention features is `jax.image.resize` (bilinear, half-pixel centres)
  instead of PyTorch's ``align_corners=True``.
- Convolutions followed by batch norm have no bias (the batch-norm bias replaces it).
- Max unpooling keeps the position of each maximum inside its 2×2 window (0..3), not a flat
  index, and on ties picks the first position in row-major order.

Parameter names. Shared by the tasks: ``backbone/{enc,dec}{b}_{i}/conv/kernel`` (block ``b``,
convolution ``i``), with their ``bn/{scale,bias}``, and the attention feature extractors
``shared_attention_{enc,dec}{b}/{conv,bn}``. Task-specific: the task attention masks
``task{k}_attention_{enc,dec}{b}/{conv0,bn0,conv1,bn1}`` and the task prediction layers
``head_{k}/{conv0,conv1}/{kernel,bias}``. Only the prediction layers carry "head" in their
names, so the default pruning rule (`mmcompress.sparsity.default_include`: rank >= 2, no
"head" in the path) prunes every convolution but the prediction layers, the attention
convolutions included, as the reference does (docs/method.md §2); the batch-norm
scales and biases and the prediction layers stay dense. Batch norm (momentum 0.9, epsilon
1e-5) keeps its running statistics in the ``batch_stats`` collection; a shared ``f`` is called
once per task, so in training its statistics are updated K times per batch, as in the
reference.

Calling convention, that of `mmcompress.models.heads`::

    seg, depth, normal = model.apply(variables, images, task_id=None, train=False)

Every task is computed for every image; `task_id` is accepted and ignored. Images are
(B, H, W, C) with H and W divisible by 32 (five 2×2 poolings; `size_multiple` for another
depth), e.g. NYUv2's 288×384.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmcompress import _checks
from mmcompress.models.heads import check_num_outputs

__all__ = ["AttentionMask", "checked_blocks", "ConvBNReLU", "decoder_widths",
           "DensePredictionHead", "max_pool_with_argmax", "max_unpool", "MultiTaskAttentionNet",
           "NUM_BLOCKS", "NYUV2_NUM_OUTPUTS", "SEGNET_CONVS_PER_BLOCK", "SEGNET_FILTERS",
           "SegNetBackbone", "SIZE_MULTIPLE", "size_multiple", "unit_vectors"]

NUM_BLOCKS = 5
# Images must be divisible by this: one 2×2 pooling per encoder block (of the default depth).
SIZE_MULTIPLE = 2**NUM_BLOCKS
SEGNET_FILTERS: tuple[int, ...] = (64, 128, 256, 512, 512)
# The 13 convolutions of VGG16 (configuration D), grouped by pooling block, as in SegNet.
SEGNET_CONVS_PER_BLOCK: tuple[int, ...] = (2, 2, 3, 3, 3)
NYUV2_NUM_OUTPUTS: tuple[int, ...] = (13, 1, 3)

# Xavier-normal weights, as the public MTAN code initialises its convolutions.
_conv_init = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def size_multiple(filters: Sequence[int] = SEGNET_FILTERS) -> int:
  """What the images' height and width must be divisible by for an MTAN of these `filters`
  (one 2×2 pooling per encoder block): 32 at the default depth of 5 blocks."""
  return 2**len(tuple(filters))


def checked_blocks(filters: Sequence[int], convs_per_block: Sequence[int]
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """`filters` and `convs_per_block` as tuples of ints >= 1, one entry per block each, or a
  `UserError` saying which is wrong (the model's own check, and a config's before any data)."""
  filters = tuple(filters)
  if not filters:
    raise _checks.UserError(f"filters must hold at least one integer >= 1, one per SegNet "
                            f"block ({NUM_BLOCKS} by default), got {filters!r}.")
  return (_checks.positive_ints(filters, len(filters), "filters", "one per SegNet block"),
          _checks.positive_ints(convs_per_block, len(filters), "convs_per_block",
                                "one per block of filters"))


def max_pool_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """2×2 max pooling with stride 2 that also returns where each maximum was.

  Args:
    x: (B, H, W, C) features, H and W even.

  Returns:
    The pooled (B, H/2, W/2, C) features and, of the same shape, the int32 position of each
    maximum inside its 2×2 window in row-major order (0 top left, 1 top right, 2 bottom left,
    3 bottom right); the first such position on ties. The gradient flows to that position
    only, as for PyTorch's ``max_pool2d``.

  >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  >>> pooled, argmax = max_pool_with_argmax(x)
  >>> pooled[0, :, :, 0].tolist(), argmax[0, :, :, 0].tolist()
  ([[5.0, 7.0], [13.0, 15.0]], [[3, 3], [3, 3]])
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_with_argmax needs even H and W, got shape {x.shape}.")
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  windows = windows.reshape(b, h // 2, w // 2, c, 4)
  argmax = jnp.argmax(windows, axis=-1).astype(jnp.int32)
  # A gather, not jnp.max: the gradient must go to the position unpooling will use.
  pooled = jnp.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
  return pooled, argmax


def max_unpool(y: jax.Array, argmax: jax.Array) -> jax.Array:
  """The inverse of `max_pool_with_argmax`: each value back at its maximum's position.

  Args:
    y: (B, h, w, C) features.
    argmax: (B, h, w, C) window positions in [0, 4), as returned by `max_pool_with_argmax`.

  Returns:
    (B, 2h, 2w, C) features, equal to `y` at the recorded positions and zero elsewhere.
  """
  if y.shape != argmax.shape:
    raise ValueError(f"max_unpool needs features and argmax of one shape, got {y.shape} and "
                     f"{argmax.shape}.")
  b, h, w, c = y.shape
  scattered = jax.nn.one_hot(argmax, 4, dtype=y.dtype) * y[..., None]
  scattered = scattered.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return scattered.reshape(b, 2 * h, 2 * w, c)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _upsample2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear")


def unit_vectors(vectors: jax.Array) -> jax.Array:
  """`vectors` / ‖vectors‖ along the last axis; a zero vector stays zero.

  The norm is floored at 1e-12 *before* the square root, so the gradient is finite
  everywhere, at a zero vector included (a `where` after the root would give 0 · ∞ = NaN).
  """
  squared = jnp.sum(jnp.square(vectors), axis=-1, keepdims=True)
  return vectors * jax.lax.rsqrt(jnp.maximum(squared, 1e-24))


class ConvBNReLU(nn.Module):
  """3×3 convolution without bias (``conv``), batch norm (``bn``), ReLU.

  Attributes:
    features: output channels.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                name="conv")(x)
    return nn.relu(_batch_norm(train, "bn")(x))


class AttentionMask(nn.Module):
  """MTAN's task-specific mask g: 1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid.

  Attributes:
    features: channels of the mask, those of the shared features it multiplies.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=_conv_init, name="conv0")(x)
    x = nn.relu(_batch_norm(train, "bn0")(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=_conv_init, name="conv1")(x)
    return nn.sigmoid(_batch_norm(train, "bn1")(x))


class DensePredictionHead(nn.Module):
  """A task's prediction: 3×3 conv (``conv0``), 1×1 conv (``conv1``), optional ℓ2 norm.

  Attributes:
    num_outputs: output channels (classes, 1 for depth, 3 for surface normals).
    normalize: divide each pixel's output vector by its ℓ2 norm.
  """
  num_outputs: int
  normalize: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(x.shape[-1], (3, 3), padding="SAME", kernel_init=_conv_init, name="conv0")(x)
    x = nn.Conv(self.num_outputs, (1, 1), kernel_init=_conv_init, name="conv1")(x)
    return unit_vectors(x) if self.normalize else x


def decoder_widths(filters: Sequence[int]) -> tuple[int, ...]:
  """Output channels of the decoder blocks, in the order they run (the encoder's, mirrored)."""
  return tuple(reversed(tuple(filters)[:-1])) + (filters[0],)


class SegNetBackbone(nn.Module):
  """The shared SegNet: VGG-style encoder, max pooling with indices, unpooling decoder.

  Blocks are named ``enc{b}_{i}`` and ``dec{b}_{i}`` (block b, convolution i), each a
  `ConvBNReLU`.

  Attributes:
    filters: output channels of the encoder blocks (5 by default), one block each.
    convs_per_block: convolutions in each encoder block; the decoder mirrors them.
  """
  filters: Sequence[int] = SEGNET_FILTERS
  convs_per_block: Sequence[int] = SEGNET_CONVS_PER_BLOCK

  def _block(self, x: jax.Array, prefix: str, width: int, convs: int, train: bool
             ) -> tuple[jax.Array, jax.Array]:
    first = ConvBNReLU(width, name=f"{prefix}_0")(x, train=train)
    last = first
    for i in range(1, convs):
      last = ConvBNReLU(width, name=f"{prefix}_{i}")(last, train=train)
    return first, last

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool
               ) -> tuple[list[tuple[jax.Array, jax.Array]], list[tuple[jax.Array, jax.Array]]]:
    """Returns the (first, last) convolution outputs of every encoder and decoder block.

    Args:
      images: (B, H, W, C) images, H and W divisible by ``size_multiple(filters)``.
      train: batch norm with batch statistics.

    Returns:
      Two lists of one pair per block: the encoder blocks from full resolution down (to 1/16
      at 5 blocks), then the decoder blocks back up to full resolution.
    """
    x = images
    encoder, argmaxes = [], []
    for b, (width, convs) in enumerate(zip(self.filters, self.convs_per_block, strict=True)):
      first, last = self._block(x, f"enc{b}", width, convs, train)
      encoder.append((first, last))
      x, argmax = max_pool_with_argmax(last)
      argmaxes.append(argmax)
    decoder = []
    widths = decoder_widths(self.filters)
    for j, (width, convs) in enumerate(zip(widths, reversed(tuple(self.convs_per_block)),
                                           strict=True)):
      x = max_unpool(x, argmaxes[-1 - j])
      first, x = self._block(x, f"dec{j}", width, convs, train)
      decoder.append((first, x))
    return encoder, decoder


class MultiTaskAttentionNet(nn.Module):
  """SegNet shared by K dense-prediction tasks, each with its own attention; see the module.

  Attributes:
    num_outputs: one output size per task; NYUv2's 13-class segmentation, depth and surface
      normals by default.
    filters: output channels of the encoder blocks, one per block (5 by default; fewer make a
      shallower network, and the images need only be divisible by `size_multiple`).
    normalize: one flag per task: divide its output by its ℓ2 norm at every pixel.
    convs_per_block: 3×3 convolutions in each encoder block (mirrored in the decoder).

  >>> model = MultiTaskAttentionNet(filters=(8, 8, 16, 16, 16))
  >>> images = jnp.zeros((2, 32, 64, 3))
  >>> def forward(x):
  ...   return model.apply(model.init(jax.random.key(0), x), x)
  >>> [y.shape for y in jax.eval_shape(forward, images)]  # shapes only, no compute
  [(2, 32, 64, 13), (2, 32, 64, 1), (2, 32, 64, 3)]
  """
  num_outputs: Sequence[int] = NYUV2_NUM_OUTPUTS
  filters: Sequence[int] = SEGNET_FILTERS
  normalize: Sequence[bool] = (False, False, True)
  convs_per_block: Sequence[int] = SEGNET_CONVS_PER_BLOCK

  def _checked_config(self) -> tuple[tuple[int, ...], tuple[bool, ...], tuple[int, ...],
                                     tuple[int, ...]]:
    sizes = check_num_outputs(self.num_outputs)
    filters, convs = checked_blocks(self.filters, self.convs_per_block)
    normalize = tuple(self.normalize)
    if len(normalize) != len(sizes) or not all(isinstance(n, bool) for n in normalize):
      raise ValueError(
          f"normalize must hold one bool per task ({len(sizes)} tasks for num_outputs="
          f"{sizes}), got {self.normalize!r}.")
    return sizes, normalize, filters, convs

  @nn.compact
  def __call__(self, images: jax.Array, task_id: jax.typing.ArrayLike | None = None, *,
               train: bool = False) -> tuple[jax.Array, ...]:
    """Returns every task's dense prediction for a batch of images.

    Args:
      images: (B, H, W, C) images, H and W divisible by ``size_multiple(filters)`` (32 at the
        default depth).
      task_id: ignored: every task is computed for every image.
      train: normalise with batch statistics and update the running ones (then pass
        ``mutable=["batch_stats"]`` to `apply`).

    Returns:
      K arrays, the k-th of shape (B, H, W, num_outputs[k]), unit-norm along the last axis
      where `normalize[k]`.

    Raises:
      ValueError: for images whose shape is not (B, H, W, C) with H, W divisible by
        ``size_multiple(filters)``, or a bad configuration.
    """
    del task_id
    sizes, normalize, filters, convs = self._checked_config()
    multiple = size_multiple(filters)
    if (images.ndim != 4 or images.shape[1] < multiple or images.shape[2] < multiple
        or images.shape[1] % multiple or images.shape[2] % multiple):
      raise ValueError(
          f"MultiTaskAttentionNet needs images of shape (B, H, W, C) with H and W positive "
          f"multiples of {multiple} (one 2x2 pooling per block), got shape "
          f"{tuple(images.shape)}; resize or pad them, e.g. NYUv2 at 288x384.")

    encoder, decoder = SegNetBackbone(filters, convs, name="backbone")(images, train=train)
    # One feature extractor f per block, shared by the tasks; the encoder's widens the
    # features to the next block's channels.
    encoder_f = [ConvBNReLU(filters[min(b + 1, len(filters) - 1)],
                            name=f"shared_attention_enc{b}") for b in range(len(filters))]
    decoder_f = [ConvBNReLU(width, name=f"shared_attention_dec{j}")
                 for j, width in enumerate(decoder_widths(filters))]

    outputs = []
    for k, (size, unit) in enumerate(zip(sizes, normalize)):
      attended = None
      for b, (first, last) in enumerate(encoder):
        inputs = first if attended is None else jnp.concatenate([first, attended], axis=-1)
        mask = AttentionMask(last.shape[-1], name=f"task{k}_attention_enc{b}")(
            inputs, train=train)
        attended = encoder_f[b](mask * last, train=train)
        attended = nn.max_pool(attended, (2, 2), strides=(2, 2))
      for j, (first, last) in enumerate(decoder):
        previous = decoder_f[j](_upsample2(attended), train=train)
        mask = AttentionMask(last.shape[-1], name=f"task{k}_attention_dec{j}")(
            jnp.concatenate([first, previous], axis=-1), train=train)
        attended = mask * last
      outputs.append(DensePredictionHead(size, unit, name=f"head_{k}")(attended))
    return tuple(outputs)
