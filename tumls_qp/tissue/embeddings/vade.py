"""Variational deep embedding (VaDE): a variational autoencoder with a Gaussian-mixture prior.

Jiang et al., "Variational Deep Embedding: An Unsupervised and Generative Approach to
Clustering" (IJCAI 2017), configured as in the CDAC breast-WSI study: 64 x 64 RGB views
scaled to [-1, 1] and flattened, fully connected encoder and decoder (500, 500 hidden
units), a 10-dimensional latent, Adam at 1e-4.

Training, as in the paper:

1. **pretraining** as a plain autoencoder (MSE) for ``pretrain_epochs``;
2. **the mixture**: a Gaussian mixture with full covariances is fitted to the latent means
   for every k in [k_min, k_max] and the k with the lowest BIC is kept (the "likelihood-based
   choice" of k; a user-given k skips it). Its weights, means and the diagonals of its
   covariances initialise VaDE's diagonal prior p(c) p(z | c). (Diagonal mixtures were tried
   for the choice of k and rejected: the latents are correlated, so BIC kept falling up to
   k_max on the design tiles of reports/embeddings.md.);
3. **VaDE**: the negative ELBO (reconstruction MSE + the KL divergence of q(z, c | x) from
   the mixture prior) is minimised jointly over the network and the mixture for
   ``epochs``.

Each tile's vector is its latent mean μ(x); its posterior is p(c | z = μ(x)).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["VaDE", "VadeHistory", "train_vade", "vade_posterior"]

LATENT = 10
HIDDEN = 500
_LOG2PI = math.log(2 * math.pi)


class VaDE(nn.Module):
    """Fully connected VAE with a k-component diagonal Gaussian-mixture prior."""

    def __init__(self, input_dim: int, k: int, latent: int = LATENT, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.input_dim, self.k, self.latent = input_dim, k, latent
        self.encoder = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(True), nn.Linear(hidden, hidden),
                                     nn.ReLU(True))
        self.mu = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(True), nn.Linear(hidden, hidden),
                                     nn.ReLU(True), nn.Linear(hidden, input_dim), nn.Tanh())
        self.pi_logits = nn.Parameter(torch.zeros(k))
        self.mu_c = nn.Parameter(torch.zeros(k, latent))
        self.log_var_c = nn.Parameter(torch.zeros(k, latent))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.log_var(h)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """log p(c) + log p(z | c) for every z (rows) and component (columns)."""
        log_pi = F.log_softmax(self.pi_logits, dim=0)
        var_c = self.log_var_c.exp()
        diff = z[:, None, :] - self.mu_c[None]
        log_pdf = -0.5 * (_LOG2PI + self.log_var_c[None] + diff ** 2 / var_c[None]).sum(dim=2)
        return log_pi[None] + log_pdf

    def posterior(self, z: torch.Tensor) -> torch.Tensor:
        """p(c | z), (n, k)."""
        return F.softmax(self.log_joint(z), dim=1)

    def elbo_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per sample (VaDE, eq. 11), with a Gaussian (MSE) reconstruction term."""
        mu, log_var = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        recon = self.decoder(z)
        rec = F.mse_loss(recon, x, reduction="none").sum(dim=1)
        gamma = self.posterior(z).clamp_min(1e-10)
        log_pi = F.log_softmax(self.pi_logits, dim=0)
        var_c = self.log_var_c.exp()
        kl_z = 0.5 * (gamma * (self.log_var_c[None] + log_var.exp()[:, None] / var_c[None]
                               + (mu[:, None] - self.mu_c[None]) ** 2 / var_c[None]).sum(dim=2)).sum(dim=1)
        kl_c = (gamma * (gamma.log() - log_pi[None])).sum(dim=1)
        entropy = 0.5 * (1 + log_var).sum(dim=1)
        return (rec + kl_z + kl_c - entropy).mean()


@dataclass
class VadeHistory:
    pretrain_loss: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    #: BIC of the full-covariance mixture on the pretrained latents for each k considered.
    bic: dict[int, float] = field(default_factory=dict)
    k: int = 0
    k_source: str = ""
    seconds: float = 0.0
    device: str = "cpu"


def _flatten(views: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(views)).float().div_(127.5).sub_(1.0).flatten(1)


def _epochs(model: VaDE, data: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
            optimiser: torch.optim.Optimizer, epochs: int, batch: int, device: torch.device, g: torch.Generator,
            record: list[float], progress: Callable[[], None]) -> None:
    n = len(data)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            x = data[idx].to(device)
            loss = loss_fn(x)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        record.append(total / n)
        progress()


def train_vade(
    views: np.ndarray,
    *,
    k: int | None,
    k_min: int,
    k_max: int,
    pretrain_epochs: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: torch.device,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[VaDE, VadeHistory]:
    """Pretrain, choose k by BIC (unless ``k`` is given), train VaDE; returns the model (eval mode) and its history."""
    from sklearn.mixture import GaussianMixture

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = _flatten(views)
    n = len(data)
    batch = min(batch_size, n)
    history = VadeHistory(device=str(device))
    started = time.perf_counter()
    total = pretrain_epochs + epochs
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    model = VaDE(data.shape[1], 1).to(device)
    pre = torch.optim.Adam(list(model.encoder.parameters()) + list(model.mu.parameters())
                           + list(model.decoder.parameters()), lr=learning_rate)
    _epochs(model, data, lambda x: F.mse_loss(model.decoder(model.encode(x)[0]), x, reduction="none").sum(1).mean(),
            pre, pretrain_epochs, batch, device, g, history.pretrain_loss, tick)
    latents = _latent_means(model, views, device)

    candidates = [k] if k is not None else list(range(max(1, k_min), max(1, min(k_max, n // 2)) + 1))
    fits = {}
    for kk in candidates:
        gmm = GaussianMixture(kk, covariance_type="full", n_init=3, reg_covar=1e-4, random_state=seed).fit(latents)
        fits[kk] = gmm
        history.bic[kk] = float(gmm.bic(latents))
    best = min(fits, key=lambda kk: (history.bic[kk], kk))
    history.k, history.k_source = best, ("user" if k is not None else "VaDE mixture (lowest BIC)")
    gmm = fits[best]

    trained = VaDE(data.shape[1], best).to(device)
    trained.load_state_dict({name: value for name, value in model.state_dict().items()
                             if not name.startswith(("pi_logits", "mu_c", "log_var_c"))}, strict=False)
    with torch.no_grad():
        trained.pi_logits.copy_(torch.as_tensor(np.log(gmm.weights_), dtype=torch.float32))
        trained.mu_c.copy_(torch.as_tensor(gmm.means_, dtype=torch.float32))
        variances = np.stack([np.diag(c) for c in gmm.covariances_])
        trained.log_var_c.copy_(torch.as_tensor(np.log(variances), dtype=torch.float32))
    optimiser = torch.optim.Adam(trained.parameters(), lr=learning_rate)
    _epochs(trained, data, trained.elbo_loss, optimiser, epochs, batch, device, g, history.loss, tick)
    history.seconds = time.perf_counter() - started
    trained.eval()
    return trained, history


def _latent_means(model: VaDE, views: np.ndarray, device: torch.device, batch: int = 512) -> np.ndarray:
    """Latent means of uint8 views, flattened a batch at a time (memory does not grow with the tiles)."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model.encode(_flatten(views[s : s + batch]).to(device))[0].cpu().numpy()
                               for s in range(0, len(views), batch)]).astype(np.float64)


def vade_posterior(model: VaDE, views: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Latent means (n, latent) and mixture posteriors p(c | μ) (n, k) of ``views``."""
    mu = _latent_means(model, views, device)
    with torch.no_grad():
        post = model.posterior(torch.as_tensor(mu, dtype=torch.float32, device=device)).cpu().numpy()
    return mu.astype(np.float32), post.astype(np.float32)
