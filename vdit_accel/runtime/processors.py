"""Installing and restoring attention processors: the one place that swaps a module's processor.

A method that replaces processors does it through a :class:`ProcessorSwap`, which remembers, per attention module,
the processor it replaced and the one it installed. That is enough to

* restore exactly what was there (:meth:`ProcessorSwap.restore`), and
* notice a processor set by someone else after acceleration was enabled (``transformer.set_attn_processor(X)``,
  CogVideoX's ``fuse_qkv_projections()``): :meth:`ProcessorSwap.check` raises :class:`ProcessorReplacedError` at the
  next transformer call instead of running without acceleration, and :meth:`ProcessorSwap.restore` leaves such a
  processor in place instead of clobbering it with the one saved at enable time.
"""

from __future__ import annotations

import torch


class ProcessorReplacedError(RuntimeError):
    """An attention processor installed by vdit-accel was replaced after ``enable_acceleration``."""


def set_processor(module: torch.nn.Module, processor) -> None:
    """Set ``module``'s attention processor. ``Attention`` / ``AttentionModuleMixin`` have ``set_processor``;
    ``MochiAttention`` has only the attribute."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


class ProcessorSwap:
    """Processors one method installed on a transformer's attention modules, and the ones they replaced.

    Args:
        transformer (`torch.nn.Module`): the transformer whose attention modules are swapped.
        owner (`str`): the method's name, used in error messages.
    """

    def __init__(self, transformer: torch.nn.Module, owner: str):
        self.transformer = transformer
        self.owner = owner
        self.entries: dict[str, tuple[torch.nn.Module, object, object]] = {}  # name -> (module, original, installed)

    def install(self, name: str, processor) -> None:
        """Install ``processor`` on the attention module ``name`` (a submodule path of the transformer)."""
        module = self.transformer.get_submodule(name)
        original = self.entries[name][1] if name in self.entries else module.processor
        set_processor(module, processor)
        self.entries[name] = (module, original, processor)

    def original(self, name: str):
        """The processor that :meth:`install` replaced on ``name``."""
        return self.entries[name][1]

    def replaced(self) -> list[tuple[str, object]]:
        """``[(name, current processor)]`` of the modules whose processor is no longer the one installed here."""
        return [(name, module.processor) for name, (module, _, installed) in self.entries.items()
                if module.processor is not installed]

    def check(self) -> None:
        """Raise :class:`ProcessorReplacedError` when a processor installed here was replaced since."""
        changed = self.replaced()
        if not changed:
            return
        name, proc = changed[0]
        more = f" (and {len(changed) - 1} more attention module(s))" if len(changed) > 1 else ""
        raise ProcessorReplacedError(
            f"The attention processor of `{name}`{more} was replaced by {type(proc).__name__} after "
            f"`enable_acceleration()` (by `set_attn_processor`, `fuse_qkv_projections` or similar). vdit-accel's "
            f"{self.owner} processor is no longer installed, so this call would silently run without it. Call "
            f"`pipe.disable_acceleration()` (it keeps your processor), set your processor, then call "
            f"`pipe.enable_acceleration(...)` again; or set the processor before enabling acceleration."
        )

    def restore(self) -> list[str]:
        """Put the original processors back where the installed ones are still in place; a processor set by someone
        else since is kept. Returns the names that were kept."""
        kept = []
        for name, (module, original, installed) in self.entries.items():
            if module.processor is installed:
                set_processor(module, original)
            else:
                kept.append(name)
        self.entries.clear()
        return kept
