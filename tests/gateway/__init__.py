"""Tests of `paychan gateway`."""
