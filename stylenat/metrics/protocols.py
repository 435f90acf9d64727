"""Fixed evaluation protocols: settings that make a number comparable with a published one.

    stylenat-paper   the StyleNAT paper's FID (FFHQ-256 2.046, FFHQ-1024 4.174, Church 3.40): pytorch-fid's
                     Inception and preprocessing (clean-fid mode ``legacy_pytorch``: bilinear resize to 299),
                     50k samples of G_ema at psi 1, against a random 50k of the training images (the reference
                     draws them unseeded at every evaluation; here seed 0, recorded with the fingerprint of the
                     chosen index list). Its records are named ``fid50k`` (50k reals, not the full dataset).

Without a protocol, the defaults are clean-fid's ``clean`` mode, 50k samples, psi 1 and any reference
statistics (``fid50k_full`` against clean-fid's ``ffhq:256:trainval70k``, e.g.), which is what new work
should report. :func:`resolve_protocol` merges a protocol with explicit settings and rejects contradictions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: preprocessing mode, sample count, truncation and reference subset."""

    name: str
    mode: str
    num_samples: int
    truncation: float
    ref_subset: int | None        # a random subset of the reference dataset of this size; None: all images
    ref_subset_seed: int = 0


PROTOCOLS = {"stylenat-paper": Protocol("stylenat-paper", mode="legacy_pytorch", num_samples=50_000,
                                        truncation=1.0, ref_subset=50_000, ref_subset_seed=0)}
_CLI_FLAGS = {"protocol": "--protocol", "mode": "--mode", "truncation": "--trunc", "ref": "--ref",
              "ref_data": "--ref-data"}
DEFAULTS = Protocol("default", mode="clean", num_samples=50_000, truncation=1.0, ref_subset=None)


@dataclass(frozen=True)
class Settings:
    """What an evaluation runs with, after merging a protocol and explicit settings."""

    protocol: str | None
    mode: str
    num_samples: int
    truncation: float
    ref_subset: int | None
    ref_subset_seed: int


def resolve_protocol(protocol: str | None, *, mode: str | None = None, truncation: float | None = None,
                     num_samples: int | None = None, ref: str | None = None, ref_subset: int | None = None,
                     ref_subset_seed: int | None = None, cli: bool = False) -> Settings:
    """The settings of ``protocol`` (None: the defaults), with the explicitly given values taking the place of
    the sample count and the subset size or seed (recorded as run). A given ``mode`` or ``truncation`` that
    contradicts the protocol, or named statistics ``ref`` where it needs a reference dataset, raise a
    ``ValueError`` naming the option (as a command-line flag with ``cli``, else as the argument)."""
    name = _CLI_FLAGS if cli else {key: key for key in _CLI_FLAGS}
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown {name['protocol']} {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[protocol] if protocol is not None else DEFAULTS
    if protocol is not None:
        given = f"{name['protocol']} {protocol}"
        if mode is not None and mode != base.mode:
            raise ValueError(f"{given} measures in mode {base.mode}, not {mode}: drop {name['mode']}")
        if truncation is not None and truncation != base.truncation:
            raise ValueError(f"{given} samples at truncation {base.truncation:g}, not {truncation:g}: "
                             f"drop {name['truncation']}")
        if ref is not None and base.ref_subset is not None:
            raise ValueError(f"{given} draws a random {base.ref_subset} of the training images: give the dataset "
                             f"({name['ref_data']}) instead of named statistics ({name['ref']})")
    return Settings(protocol=protocol, mode=mode or base.mode, num_samples=num_samples or base.num_samples,
                    truncation=base.truncation if truncation is None else truncation,
                    ref_subset=ref_subset if ref_subset is not None else base.ref_subset,
                    ref_subset_seed=ref_subset_seed if ref_subset_seed is not None else base.ref_subset_seed)
