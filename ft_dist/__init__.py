"""ft_dist: sparse deep ensembles (FreeTickets) with dynamic sparse training at cluster scale."""

__version__ = "0.1.0"
