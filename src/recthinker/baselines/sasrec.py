"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), PyTorch on the CPU.

Each user's background sequence (oldest first) is cut into windows of `max_len + 1` items; the model reads
a window's first `max_len` items and predicts, at every position t, the item at t + 1:

    h = item_emb(seq) * sqrt(H) + pos_emb(0..T-1)               (B, T, H)
    h = blocks(h)  x n_blocks: pre-LN causal self-attention + position-wise feed-forward, residuals
    logits = LN(h)[real positions] @ item_emb[1:]^T              (n_real, n_items), tied embeddings
    loss = cross-entropy(logits, next items)                     full softmax over all items

Full-softmax cross-entropy (as in Klenitskiy & Vasilev, RecSys 2023) replaces the paper's one sampled
negative with binary cross-entropy: with sampled BCE the model stayed below Pop after 50 epochs on ML-100K
(see shared/README.md). A user is scored from the last `max_len` items of their background sequence (a known
user) or of `history` (anyone else); the score of item c is h_T . item_emb[c].

Hyper-parameters (dataclass fields): max_len 50, hidden 64, 2 blocks, 1 head, dropout 0.2, Adam lr 1e-3,
batch 128, `epochs`. On ML-1M (~25k windows, ~200 steps an epoch): shared/README.md reports NDCG@10 0.534
with 1 + 99 candidates after 8 epochs (~12 minutes on 2 free cores). Measured here on a machine shared with
other jobs (~0.5 core): ~6-11 minutes an epoch; after 2 epochs (loss 7.74 -> 7.52) NDCG@10 was still at the
Pop level, 0.561 with 1 + 19 and 0.258 with 1 + 99, so use 8 or more. Fitting uses `threads` torch threads and restores the previous setting afterwards;
all randomness (init, dropout, batch order) comes from the `rng` passed to `fit`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import torch
from torch import nn

from recthinker.baselines.base import fill_unknown
from recthinker.data.log import InteractionLog, Vocab

log = logging.getLogger(__name__)


class _Block(nn.Module):
    """Pre-LN transformer block: causal self-attention, then a position-wise feed-forward layer."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ln_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.ln_attn(x)  # (B, T, H)
        a, _ = self.attn(q, q, q, attn_mask=mask, need_weights=False)  # (B, T, H)
        x = x + self.drop(a)
        return x + self.ffn(self.ln_ffn(x))  # (B, T, H)


class SASRecModel(nn.Module):
    """Item + learned position embeddings, `n_blocks` causal blocks, tied output embeddings. Index 0 = padding."""

    def __init__(
        self, n_items: int, max_len: int, hidden: int, n_blocks: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, dropout) for _ in range(n_blocks))
        self.ln_out = nn.LayerNorm(hidden)
        nn.init.normal_(self.item_emb.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position: seq (B, T) item indices, left-padded with 0 -> (B, T, H)."""
        batch, length = seq.shape
        pad = seq == 0  # (B, T)
        pos = torch.arange(length, device=seq.device)  # (T,)
        h = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(pos)  # (B, T, H)
        h = self.drop(h) * ~pad.unsqueeze(-1)
        # blocked: the future (causal) and padding keys; each position may always see itself, so the rows of
        # padding positions are never empty (their outputs are ignored by the loss and by scoring)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)  # (T, T)
        mask = causal | pad.unsqueeze(1)  # (B, T, T): query t, key s
        mask = mask & ~torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = mask.repeat_interleave(self.heads, dim=0)  # (B * heads, T, T)
        for block in self.blocks:
            h = block(h, mask)
        return self.ln_out(h)  # (B, T, H)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every real item: (..., H) -> (..., n_items), column c is item index c + 1."""
        return hidden @ self.item_emb.weight[1:].T


@dataclass
class SASRecScorer:
    """Next-item transformer over the background sequences, trained with full-softmax cross-entropy."""

    name: ClassVar[str] = "sasrec"

    max_len: int = 50  # items of history the model reads (T)
    hidden: int = 64  # embedding and hidden size (H)
    n_blocks: int = 2  # self-attention blocks
    heads: int = 1  # attention heads per block; must divide `hidden`
    dropout: float = 0.2  # dropout on embeddings, attention weights and feed-forward outputs
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 128  # windows per optimisation step
    epochs: int = 8  # passes over all windows
    threads: int = 2  # torch CPU threads while fitting (capped at the CPU count)

    users_: Vocab = field(init=False, repr=False)
    items_: Vocab = field(init=False, repr=False)
    user_seqs_: dict[str, np.ndarray] = field(
        init=False, repr=False
    )  # user -> last max_len item indices (1-based)
    model_: SASRecModel = field(init=False, repr=False)
    losses_: list[float] = field(init=False, repr=False)  # mean training loss per epoch
    epochs_: int = field(init=False, repr=False)  # epochs trained (fewer than `epochs` after an early stop)

    resumable: ClassVar[bool] = True  # `fit` takes `checkpoint=` (fit_or_load passes one)

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"SASRec hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.max_len < 2 or self.epochs < 0:
            raise ValueError(f"SASRec needs max_len >= 2 and epochs >= 0, got {self.max_len}, {self.epochs}")

    def fit(
        self,
        log: InteractionLog,
        *,
        rng: np.random.Generator,
        checkpoint: Path | None = None,
        on_epoch: Callable[[int, Self], bool] | None = None,
    ) -> Self:
        """Train on `log`'s sequences for `epochs` epochs.

        Args:
            log: The background.
            rng: Every random draw (init, dropout, batch order) comes from it.
            checkpoint: A file written (atomically) after every epoch with the model, the optimiser and both
                random states; when it exists at the start, training continues after the epoch it holds,
                and ends exactly where an uninterrupted fit would have. The caller removes it when done.
            on_epoch: Called after each epoch with (epochs done, self) while the model is in eval mode;
                returning True stops training there (early stopping: `epochs_` records where).
        """
        self._prepare(log)
        windows = torch.from_numpy(self._windows(list(self._sequences(log).values())))  # (N, T + 1)
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(self.threads, os.cpu_count() or 1)))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**63)))
                self.model_ = SASRecModel(
                    len(self.items_), self.max_len, self.hidden, self.n_blocks, self.heads, self.dropout
                )
                self._train(windows, rng, checkpoint, on_epoch)
        finally:
            torch.set_num_threads(prev_threads)
        self.model_.eval()
        return self

    def _sequences(self, log: InteractionLog) -> dict[str, np.ndarray]:
        """Every user's item indices (1-based; 0 is padding), oldest first."""
        codes = self.items_.indices(log.frame["item_id"].tolist()) + 1
        rows = log.frame.groupby("user_id", sort=False).indices  # user -> row positions, oldest first
        return {u: codes[pos] for u, pos in rows.items()}

    def _prepare(self, log: InteractionLog) -> None:
        self.users_, self.items_ = log.users, log.items
        self.user_seqs_ = {u: seq[-self.max_len :] for u, seq in self._sequences(log).items()}

    def with_sequences(self, log: InteractionLog) -> Self:
        """This fitted model reading known users' sequences from `log` (a newer background, e.g. train +
        validation), the weights unchanged: SASRec's test protocol (train on train, test on an input that
        also holds the validation item). Items this model never saw are dropped from the sequences."""
        other = copy.copy(self)
        codes = self.items_.indices(log.frame["item_id"].tolist()) + 1  # 0: unknown here, dropped below
        rows = log.frame.groupby("user_id", sort=False).indices
        other.user_seqs_ = {u: (seq := codes[pos])[seq > 0][-self.max_len :] for u, pos in rows.items()}
        return other

    # ---- a fitted model as plain tensors (shipped fits: baselines/fitted/) ----------------------------

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted network's weights; with the log it was fitted on, `from_state` rebuilds this scorer."""
        return {k: v.detach().clone() for k, v in self.model_.state_dict().items()}

    def from_state(self, log: InteractionLog, state: dict[str, torch.Tensor]) -> Self:
        """This (unfitted) scorer, fitted: its weights from `state`, its vocabularies and sequences from `log`.

        Raises:
            ValueError: `state` does not fit these settings and this log's items (e.g. another catalog).
        """
        self._prepare(log)
        self.model_ = SASRecModel(
            len(self.items_), self.max_len, self.hidden, self.n_blocks, self.heads, self.dropout
        )
        try:
            self.model_.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"SASRec weights do not match these settings and items: {e}") from None
        self.model_.eval()
        self.epochs_ = self.epochs
        self.losses_ = []
        return self

    def _windows(self, seqs: list[np.ndarray]) -> np.ndarray:
        """Cut each sequence, from its end backwards, into left-padded windows of max_len + 1 items.

        Consecutive windows overlap by one item, so every transition (a -> b) is a training target once.
        """
        size, rows = self.max_len + 1, []
        for seq in seqs:
            for end in range(len(seq), 1, -self.max_len):
                chunk = seq[max(0, end - size) : end]
                rows.append(np.pad(chunk, (size - len(chunk), 0)))
        return np.array(rows, dtype=np.int64).reshape(-1, size)

    def _train(
        self,
        windows: torch.Tensor,
        rng: np.random.Generator,
        checkpoint: Path | None,
        on_epoch: Callable[[int, Self], bool] | None,
    ) -> None:
        optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        loss_fn = nn.CrossEntropyLoss()
        self.losses_, self.epochs_, start = [], 0, 0
        if checkpoint is not None and Path(checkpoint).is_file():
            start = self._resume(Path(checkpoint), optimizer, rng)
        for epoch in range(start, self.epochs):
            self.model_.train()
            order = torch.from_numpy(rng.permutation(len(windows)))
            total, steps = 0.0, 0
            for first in range(0, len(windows), self.batch_size):
                batch = windows[order[first : first + self.batch_size]]  # (B, T + 1)
                inputs, targets = batch[:, :-1], batch[:, 1:] - 1  # (B, T) each
                real = inputs != 0  # (B, T): no target after a padding input (windows are left-padded)
                # logits only where there is a target: long windows are mostly padding for short users
                logits = self.model_.logits(self.model_(inputs)[real])  # (n_real, n_items)
                loss = loss_fn(logits, targets[real])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            self.losses_.append(total / max(steps, 1))
            self.epochs_ = epoch + 1
            log.info("sasrec epoch %d/%d: loss %.4f", epoch + 1, self.epochs, self.losses_[-1])
            if checkpoint is not None:
                self._save_checkpoint(Path(checkpoint), optimizer, rng)
            self.model_.eval()
            if on_epoch is not None and on_epoch(epoch + 1, self):
                break

    def _save_checkpoint(
        self, path: Path, optimizer: torch.optim.Optimizer, rng: np.random.Generator
    ) -> None:
        blob = {
            "epochs_done": self.epochs_,
            "losses": torch.tensor(self.losses_, dtype=torch.float64),
            "model": self.model_.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state),  # 128-bit integers: JSON, not tensors
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)

    def _resume(self, path: Path, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> int:
        """Restore the state `_save_checkpoint` wrote; returns the number of epochs it had done."""
        blob = torch.load(path, weights_only=True)
        self.model_.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["torch_rng"])
        rng.bit_generator.state = json.loads(blob["numpy_rng"])
        self.losses_ = [float(x) for x in blob["losses"]]
        self.epochs_ = int(blob["epochs_done"])
        log.info("sasrec: resuming from %s after epoch %d/%d", path, self.epochs_, self.epochs)
        return self.epochs_

    def score(
        self, items: Sequence[str], *, user_id: str | None = None, history: Sequence[str] = ()
    ) -> np.ndarray:
        idx = self.items_.indices(list(items))
        if user_id is not None and user_id in self.user_seqs_:
            seq = self.user_seqs_[user_id]
        else:
            hist = self.items_.indices(list(history))
            seq = hist[hist >= 0][-self.max_len :] + 1
        if len(seq) == 0:  # nothing to read: every known item ties
            return fill_unknown(idx, np.zeros(int((idx >= 0).sum())))
        # left-pad to max_len, as in training, so the last item sits at the last learned position
        padded = np.pad(np.asarray(seq, dtype=np.int64), (self.max_len - len(seq), 0))
        seq_t = torch.from_numpy(padded).unsqueeze(0)  # (1, T)
        with torch.inference_mode():
            last = self.model_(seq_t)[0, -1]  # (H,)
            emb = self.model_.item_emb.weight[torch.from_numpy(idx[idx >= 0] + 1)]  # (n_known, H)
            scores = (emb @ last).double().numpy()  # (n_known,)
        return fill_unknown(idx, scores)

    def score_many(
        self, requests: Sequence[tuple[str | None, Sequence[str], Sequence[str]]]
    ) -> list[np.ndarray]:
        """`score` for many (user_id, history, items) at once, in batches of 256 sequences: the same numbers
        (up to float rounding of the batched matrix products), an order of magnitude faster."""
        seqs, idxs = [], []
        for user_id, history, items in requests:
            idxs.append(self.items_.indices(list(items)))
            if user_id is not None and user_id in self.user_seqs_:
                seq = self.user_seqs_[user_id]
            else:
                hist = self.items_.indices(list(history))
                seq = hist[hist >= 0][-self.max_len :] + 1
            seqs.append(np.pad(np.asarray(seq, dtype=np.int64), (self.max_len - len(seq), 0)))
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for first in range(0, len(seqs), 256):
                batch = torch.from_numpy(np.stack(seqs[first : first + 256]))  # (B, T)
                last = self.model_(batch)[:, -1]  # (B, H)
                for row, idx in zip(last, idxs[first : first + 256], strict=True):
                    emb = self.model_.item_emb.weight[torch.from_numpy(idx[idx >= 0] + 1)]  # (n_known, H)
                    known = (emb @ row).double().numpy()
                    out.append(fill_unknown(idx, known))
        for k, (seq, idx) in enumerate(zip(seqs, idxs, strict=True)):
            if not seq.any():  # nothing to read: every known item ties, as in `score`
                out[k] = fill_unknown(idx, np.zeros(int((idx >= 0).sum())))
        return out
