"""Model zoo: tiny trained pipelines, medium random-weight specs and full-scale model specs."""
