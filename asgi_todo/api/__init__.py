"""The endpoints: each module ends in its list of operations."""
