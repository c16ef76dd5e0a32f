from .naive import gather_rows, naive_query_sparse_attention, sdpa_query_sparse_attention

__all__ = ["gather_rows", "naive_query_sparse_attention", "sdpa_query_sparse_attention"]
