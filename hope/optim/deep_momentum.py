"""Deep Momentum Gradient Descent (DMGD; Nested Learning Eq. 23), coordinate-wise.

The paper (Eqs. 17-23): SGD with momentum is a two-level system whose momentum m is a memory of past gradients,
trained by one gradient step per optimizer step on the dot-product objective <m, u> (Eq. 18, u = grad L(W)):
m_{i+1} = alpha m_i - lr u_i, W_{i+1} = W_i + m_{i+1}. DMGD makes that memory an MLP evaluated at the gradient:

    W_{i+1} = W_i + m_{i+1}(u_i),    m_{i+1} = alpha m_i - lr grad L2(m_i; u_i)                        (Eq. 23)

and leaves the memory's shape and its internal objective L2 open ("need to be designed carefully"). What we
implement, independently for every coordinate of a parameter, so that it works on any shape (DeepSpeed's flat
ZeRO partitions included):

    memory      m(u) = b + a * tanh(w * u)       a 1 -> 1 -> 1 MLP with one tanh unit and an output bias;
                                                  state (b, a, w), each shaped like the parameter
    objective   L2(m; u) = <m(u), u>             Eq. 18's <m, u> with the memory evaluated at u
    memory step, all gradients at the old (a, w):
                b <- alpha b - lr u
                a <- alpha a - lr tanh(w u) u
                w <- w - lr a (1 - tanh(w u)^2) u^2
    weight step W <- W (1 - lr weight_decay) + b + a * tanh(w u)    (the new memory at the same u)

* With the tanh unit removed (a = 0) this is exactly heavy-ball momentum, Eqs. 17-18. The unit adds a learned,
  bounded function of the current gradient: |a tanh(w u)| <= |a| <= lr max|u| / (1 - alpha), the same bound as b.
* Retention alpha (``momentum``) acts on b and a, the output side, as Eq. 23's alpha m_i. It does not act on the
  key-side weight w: alpha < 1 there would shrink w geometrically and with it tanh(w u), so the MLP would decay
  back to plain momentum within ~1 / (1 - alpha) steps.
* Init b = a = 0, w = ``key_scale``. The key is the raw gradient: for |key_scale * u| << 1 the unit is nearly
  linear (a * w * u, a learned per-coordinate gain on the current gradient); with key_scale ~ 1 / typical |u| it
  saturates into a sign-like step.
* The non-linear-output variant of Eq. 24 (W += sigma(m(u)), Newton-Schulz giving Muon) is not implemented.
"""

import torch

__all__ = ["deep_momentum_step"]


@torch.no_grad()
def deep_momentum_step(
    param: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, momentum: float, key_scale: float, weight_decay
) -> None:
    """One DMGD step on ``param`` in place; ``state`` holds (b, a, w) and is filled on the first call."""
    if "dm_b" not in state:
        state["dm_b"], state["dm_a"] = torch.zeros_like(param), torch.zeros_like(param)
        state["dm_w"] = torch.full_like(param, key_scale)
    b, a, w = state["dm_b"], state["dm_a"], state["dm_w"]
    t = torch.tanh(w * grad)
    grad_w = a * (1 - t * t) * grad * grad  # d<m(u), u>/dw at the old a, w
    a.mul_(momentum).sub_(lr * t * grad)  # d<m(u), u>/da = tanh(w u) u
    b.mul_(momentum).sub_(grad, alpha=lr)  # d<m(u), u>/db = u
    w.sub_(lr * grad_w)
    param.mul_(1 - lr * weight_decay).add_(b + a * torch.tanh(w * grad))  # W + m_{i+1}(u_i)
