"""Tests of export/hub: folders other tools open."""
