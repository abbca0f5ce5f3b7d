"""One gateway process's parts with a lifetime, and live reload, which swaps them."""
