"""Query-sparse attention: exact attention of selected query rows over all keys, with each row's LSE.

``naive.py`` is the reference (oracle and CPU path), ``triton.py`` the in-kernel-gather flash kernel (imported only
when it runs), ``xformers_partial.py`` the xformers fallback. Dispatch lives in :mod:`vdit_accel.kernels`.
"""

from .naive import gather_rows, naive_query_sparse_attention, scatter_rows_, sdpa_query_sparse_attention

__all__ = ["gather_rows", "naive_query_sparse_attention", "scatter_rows_", "sdpa_query_sparse_attention"]
